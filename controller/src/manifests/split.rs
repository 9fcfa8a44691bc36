//! A manifests file cut into its YAML documents without parsing them, and the fingerprints that
//! tell an unchanged document (or `List` item) from a changed one.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// The most documents a file may hold (a cluster's objects, one per document, fit many times):
/// past it the file is refused, before anything in it is parsed.
pub const MAX_DOCUMENTS: usize = 100_000;

/// What a fingerprint was taken of: the same bytes as a document and as a List item are
/// different units.
#[derive(Clone, Copy, Debug)]
pub(super) enum Domain {
    /// A document's text, from its `---` line to the next one.
    Document = 0,
    /// A `List` item's JSON text, as written.
    JsonItem = 1,
    /// A `List` item of a YAML document, as the JSON it reads as.
    YamlItem = 2,
}

/// A document's or List item's fingerprint: a keyed hash of its bytes, and their length. The
/// key is random per process, so a file's author cannot make two different documents collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Key {
    hash: u64,
    len: usize,
}

impl Key {
    pub(super) fn of(domain: Domain, bytes: &[u8]) -> Key {
        static STATE: OnceLock<RandomState> = OnceLock::new();
        let mut h = STATE.get_or_init(RandomState::new).build_hasher();
        h.write_u8(domain as u8);
        h.write(bytes);
        Key {
            hash: h.finish(),
            len: bytes.len(),
        }
    }
}

/// Why a file was not cut into documents.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Uncut {
    /// It has a directive (`%YAML`, `%TAG`): they apply to the document after them, so the
    /// file is read whole.
    Directives,
    /// More than [`MAX_DOCUMENTS`] documents.
    TooMany,
}

/// Whether the line starting at `line` is a document start marker: `---` at column 0 followed
/// by white space or the end of the line. YAML forbids such a line inside any scalar or
/// collection, so it always starts a new document.
fn is_start_marker(line: &[u8]) -> bool {
    line.starts_with(b"---") && matches!(line.get(3), None | Some(b' ' | b'\t' | b'\r' | b'\n'))
}

/// Cuts `text` at its document start markers: each piece but the first starts with its
/// `---` line; the first is what comes before the first marker (often nothing, or comments).
/// The pieces, put back together, are `text`.
pub(super) fn documents(text: &str) -> Result<Vec<&str>, Uncut> {
    let bytes = text.as_bytes();
    let mut starts = vec![0];
    let mut at = 0;
    while at < bytes.len() {
        let line = &bytes[at..];
        if line.first() == Some(&b'%') {
            return Err(Uncut::Directives);
        }
        if at > 0 && is_start_marker(line) {
            if starts.len() >= MAX_DOCUMENTS {
                return Err(Uncut::TooMany);
            }
            starts.push(at);
        }
        match text[at..].find('\n') {
            Some(i) => at += i + 1,
            None => break,
        }
    }
    starts.push(bytes.len());
    Ok(starts.windows(2).map(|w| &text[w[0]..w[1]]).collect())
}

/// Whether a piece before the first marker holds no document: only blank and comment lines
/// (lines as the YAML parser breaks them: also at NEL, LINE and PARAGRAPH SEPARATOR). Stops at
/// the first other character: a whole file without `---` lines is not scanned.
pub(super) fn is_blank(piece: &str) -> bool {
    const BREAKS: [char; 5] = ['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'];
    let mut rest = piece;
    loop {
        rest = rest
            .trim_start_matches(|c| matches!(c, '\u{feff}' | ' ' | '\t') || BREAKS.contains(&c));
        if !rest.starts_with('#') {
            return rest.is_empty();
        }
        match rest.find(BREAKS) {
            Some(i) => rest = &rest[i..],
            None => return true,
        }
    }
}

/// The JSON object a document holds when it is written as one: its text after the `---` marker,
/// when that starts with `{`. Whether it really is JSON is for the JSON parser to say.
pub(super) fn json_body(piece: &str) -> Option<&str> {
    let body = if is_start_marker(piece.as_bytes()) {
        &piece[3..]
    } else {
        piece
    };
    body.trim_start_matches([' ', '\t', '\r', '\n'])
        .starts_with('{')
        .then_some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_markers_only() {
        let text = "# head\n---\na: 1\n--- # two\nb: |\n  ---\n  x\n---{c: 1}\n---\r\nd: 2\n---";
        let docs = documents(text).unwrap();
        assert_eq!(docs.concat(), text);
        assert_eq!(
            docs,
            [
                "# head\n",
                "---\na: 1\n",
                "--- # two\nb: |\n  ---\n  x\n---{c: 1}\n",
                "---\r\nd: 2\n",
                "---"
            ]
        );
        assert!(is_blank(docs[0]));
        assert!(!is_blank("a: 1\n"));
        assert!(!is_blank("# x\u{2028}a"), "YAML breaks lines there");
        assert!(is_blank("\u{feff}# a\r\n  # b\n\t\n"));
        assert!(!is_blank("# a\n  b: 1 # c\n"));
        assert_eq!(documents("").unwrap(), [""]);
    }

    #[test]
    fn directives_and_too_many_documents_are_not_cut() {
        assert_eq!(documents("%YAML 1.2\n---\na: 1\n"), Err(Uncut::Directives));
        let many = "---\n".repeat(MAX_DOCUMENTS + 1);
        assert_eq!(documents(&many), Err(Uncut::TooMany));
        let most = "---\n".repeat(MAX_DOCUMENTS);
        assert_eq!(documents(&most).unwrap().len(), MAX_DOCUMENTS);
    }

    #[test]
    fn json_bodies() {
        assert_eq!(json_body("--- {\"a\":1}\n"), Some(" {\"a\":1}\n"));
        assert_eq!(json_body("\n  {}"), Some("\n  {}"));
        assert_eq!(json_body("---\na: {}\n"), None);
        assert_eq!(json_body("[{}]"), None);
    }

    #[test]
    fn keys_differ_by_bytes_and_domain() {
        let a = Key::of(Domain::Document, b"abc");
        assert_eq!(a, Key::of(Domain::Document, b"abc"));
        assert_ne!(a, Key::of(Domain::Document, b"abd"));
        assert_ne!(a, Key::of(Domain::JsonItem, b"abc"));
    }
}
