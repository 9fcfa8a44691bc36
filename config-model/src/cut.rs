//! Bounding of values quoted back to users: errors, logs, `/api/services` and Events repeat a
//! bad value so that it can be found, never so much of it that a hostile value fills them.

use std::borrow::Cow;

/// Longest message, in bytes, that a problem report (log line, Event, `/api/services` entry)
/// carries; see [`cut_message`].
pub const MAX_MESSAGE: usize = 1024;

/// Longest value, in bytes, that [`cut`] leaves whole.
pub const MAX_QUOTED: usize = 128;

/// `value` if it is at most [`MAX_QUOTED`] bytes long; otherwise its start (cut at a character
/// boundary), an ellipsis and the original length, e.g. `aaaa…[1048576 bytes]`.
pub fn cut(value: &str) -> Cow<'_, str> {
    if value.len() <= MAX_QUOTED {
        return Cow::Borrowed(value);
    }
    // Keep room for the marker so the result stays under MAX_QUOTED + a few bytes.
    let mut end = MAX_QUOTED - 32;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…[{} bytes]", &value[..end], value.len()))
}

/// [`cut`] for anything displayable: formats it, then cuts.
pub fn cut_display(value: impl std::fmt::Display) -> String {
    let s = value.to_string();
    match cut(&s) {
        Cow::Borrowed(_) => s,
        Cow::Owned(c) => c,
    }
}

/// Cuts a whole message (an error or a problem that quotes several values) to `max` bytes at a
/// character boundary, with the same marker. A backstop for messages built elsewhere.
pub fn cut_message(message: &str, max: usize) -> Cow<'_, str> {
    if message.len() <= max {
        return Cow::Borrowed(message);
    }
    let mut end = max.saturating_sub(32).max(1).min(message.len());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…[{} bytes]", &message[..end], message.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_stay_whole() {
        assert_eq!(cut("abc"), "abc");
        let exact = "x".repeat(MAX_QUOTED);
        assert_eq!(cut(&exact), exact.as_str());
    }

    #[test]
    fn long_values_keep_their_start_and_say_how_long_they_were() {
        let mb = "a".repeat(1 << 20);
        let c = cut(&mb);
        assert!(c.len() <= MAX_QUOTED + 8, "{} bytes", c.len());
        assert!(c.starts_with("aaaa"));
        assert!(c.ends_with("…[1048576 bytes]"), "{c}");
    }

    #[test]
    fn cuts_at_a_character_boundary() {
        let s = "é".repeat(1000);
        let c = cut(&s);
        assert!(c.starts_with("éé"));
        assert!(c.ends_with("…[2000 bytes]"));
        let m = cut_message(&s, 101);
        assert!(m.ends_with("…[2000 bytes]"));
    }
}
