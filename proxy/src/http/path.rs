//! Request-path normalisation: the one form of a path that access rules and traffic-split
//! matches see and that the upstream receives, so that a backend which normalises paths
//! cannot serve what a rule denied.
//!
//! The rules (documented in docs/proxy.md, "Request paths"):
//! - percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; every other
//!   escape stays, with upper-case hex digits;
//! - bytes that may not appear bare in a path (non-ASCII, `"`, `<`, `{`, ...) are
//!   percent-encoded;
//! - empty segments are dropped (`//` becomes `/`), as nginx and most servers do;
//! - dot-segments are removed per RFC 3986 section 5.2.4 (a `..` above the root is dropped);
//! - refused as ambiguous: an encoded `/` (`%2F`) or `\` (`%5C`), a bare `\`, a control byte
//!   (bare or encoded, NUL included), an invalid escape, and a segment that is a dot-segment
//!   once its path parameters (from the first `;` or `%3B`) are cut, such as `..;` (servlet
//!   containers strip those and then resolve the dots).

use std::fmt;

/// Why a path was refused. Each is answered with 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// `%2F` in a segment: one server splits on it, another does not.
    EncodedSlash,
    /// `%5C`: some servers treat `\` as a separator.
    EncodedBackslash,
    /// A bare `\`.
    Backslash,
    /// A control byte (NUL, CR, LF, ..., DEL), bare or encoded.
    ControlByte,
    /// `%` not followed by two hex digits.
    InvalidEscape,
    /// `..;`, `.;x` and the like.
    DotSegmentWithParameters,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path does not start with /",
            PathError::EncodedSlash => "an encoded / (%2F) in a segment is ambiguous",
            PathError::EncodedBackslash => "an encoded \\ (%5C) is ambiguous",
            PathError::Backslash => "a \\ in the path is ambiguous",
            PathError::ControlByte => "control bytes (NUL, CR, LF, ...) are not allowed",
            PathError::InvalidEscape => "a % not followed by two hex digits",
            PathError::DotSegmentWithParameters => {
                "a dot-segment with path parameters (..; or .;) is ambiguous"
            }
        })
    }
}

impl std::error::Error for PathError {}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes that stay bare in a normalised segment: unreserved, sub-delims, `:` and `@`
/// (RFC 3986 `pchar`, without `%`).
fn stays_bare(b: u8) -> bool {
    is_unreserved(b) || b"!$&'()*+,;=:@".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 0xf)] as char);
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// One segment (no `/` in it) in normalised form, appended to `out`.
fn normalise_segment(seg: &[u8], out: &mut String) -> Result<(), PathError> {
    let mut i = 0;
    while i < seg.len() {
        let b = seg[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                seg.get(i + 1).copied().and_then(hex),
                seg.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::InvalidEscape);
            };
            let decoded = hi << 4 | lo;
            match decoded {
                b'/' => return Err(PathError::EncodedSlash),
                b'\\' => return Err(PathError::EncodedBackslash),
                d if is_control(d) => return Err(PathError::ControlByte),
                d if is_unreserved(d) => out.push(d as char),
                d => push_escaped(out, d),
            }
            i += 3;
            continue;
        }
        match b {
            b'\\' => return Err(PathError::Backslash),
            b if is_control(b) => return Err(PathError::ControlByte),
            b if stays_bare(b) => out.push(b as char),
            b => push_escaped(out, b),
        }
        i += 1;
    }
    Ok(())
}

/// Whether a normalised segment is `.` or `..` once its path parameters are cut.
fn dot_with_parameters(seg: &str) -> bool {
    let cut = match (seg.find(';'), seg.find("%3B")) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => return false,
    };
    matches!(&seg[..cut], "." | "..")
}

/// The normalised form of `path` (the request path, without the query), or why it is
/// refused. Linear in the length of the path; never recurses.
pub fn normalise(path: &[u8]) -> Result<String, PathError> {
    let Some(rest) = path.strip_prefix(b"/") else {
        return Err(PathError::NotAbsolute);
    };
    // Byte offsets in `out` where each kept segment starts (its leading '/' included).
    let mut starts: Vec<usize> = Vec::new();
    let mut out = String::with_capacity(path.len());
    let mut trailing_slash = false;
    let mut segments = rest.split(|&b| b == b'/').peekable();
    while let Some(raw) = segments.next() {
        let last = segments.peek().is_none();
        let start = out.len();
        out.push('/');
        normalise_segment(raw, &mut out)?;
        match &out[start + 1..] {
            "" => {
                out.truncate(start);
                trailing_slash = last;
            }
            "." => {
                out.truncate(start);
                trailing_slash = last;
            }
            ".." => {
                out.truncate(start);
                if let Some(prev) = starts.pop() {
                    out.truncate(prev);
                }
                trailing_slash = last;
            }
            seg if dot_with_parameters(seg) => return Err(PathError::DotSegmentWithParameters),
            _ => {
                starts.push(start);
                trailing_slash = false;
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ok(p: &str) -> String {
        normalise(p.as_bytes()).unwrap_or_else(|e| panic!("{p:?}: {e}"))
    }

    fn err(p: &str) -> PathError {
        normalise(p.as_bytes()).expect_err(p)
    }

    #[test]
    fn removes_dot_segments_as_rfc_3986_says() {
        for (input, want) in [
            ("/", "/"),
            ("/api", "/api"),
            ("/api/", "/api/"),
            ("/api/../admin", "/admin"),
            ("/api/./x", "/api/x"),
            ("/api/.", "/api/"),
            ("/api/..", "/"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/../../admin", "/admin"),
            ("/..", "/"),
            ("/.../x", "/.../x"),
            ("/a/..b/c.", "/a/..b/c."),
        ] {
            assert_eq!(ok(input), want, "{input}");
        }
    }

    #[test]
    fn decodes_unreserved_escapes_only() {
        assert_eq!(ok("/api/%2e%2e/admin"), "/admin");
        assert_eq!(ok("/api/%2E%2e/admin"), "/admin");
        assert_eq!(ok("/api/.%2e/admin"), "/admin");
        assert_eq!(ok("/%61%70%69/%7e%5F-"), "/api/~_-");
        assert_eq!(ok("/a%20b/%3f/%25"), "/a%20b/%3F/%25");
        assert_eq!(ok("/caf\u{e9}"), "/caf%C3%A9");
        assert_eq!(ok("/a\"b<c>{d}"), "/a%22b%3Cc%3E%7Bd%7D");
        assert_eq!(ok("/k=v;x@y:z"), "/k=v;x@y:z");
    }

    #[test]
    fn merges_slashes_before_removing_dots() {
        assert_eq!(ok("//api"), "/api");
        assert_eq!(ok("/api//x///"), "/api/x/");
        assert_eq!(ok("/api//../../admin"), "/admin");
        assert_eq!(ok("/api//..//../admin"), "/admin");
    }

    #[test]
    fn refuses_what_stays_ambiguous() {
        assert_eq!(err("/api/..%2fadmin"), PathError::EncodedSlash);
        assert_eq!(err("/api%2F..%2Fadmin"), PathError::EncodedSlash);
        assert_eq!(err("/api/..%5cadmin"), PathError::EncodedBackslash);
        assert_eq!(err("/api/..\\admin"), PathError::Backslash);
        assert_eq!(err("/api/..;/admin"), PathError::DotSegmentWithParameters);
        assert_eq!(err("/api/.;x/admin"), PathError::DotSegmentWithParameters);
        assert_eq!(
            err("/api/%2e%2e;/admin"),
            PathError::DotSegmentWithParameters
        );
        assert_eq!(err("/api/..%3b/admin"), PathError::DotSegmentWithParameters);
        assert_eq!(err("/api/%00"), PathError::ControlByte);
        assert_eq!(err("/api/\0"), PathError::ControlByte);
        assert_eq!(err("/api/%0d%0a"), PathError::ControlByte);
        assert_eq!(err("/api/%7f"), PathError::ControlByte);
        assert_eq!(err("/api/%zz"), PathError::InvalidEscape);
        assert_eq!(err("/api/%4"), PathError::InvalidEscape);
        assert_eq!(err("/api/%"), PathError::InvalidEscape);
        assert_eq!(err("api"), PathError::NotAbsolute);
        assert_eq!(err(""), PathError::NotAbsolute);
        // A semicolon elsewhere is an ordinary character.
        assert_eq!(ok("/api;v=1/x;y"), "/api;v=1/x;y");
        assert_eq!(ok("/..x;/a"), "/..x;/a");
    }

    fn has_dot_segment(p: &str) -> bool {
        p.split('/').any(|s| s == "." || s == "..")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn never_panics_is_idempotent_and_leaves_no_dot_segment(
            path in proptest::collection::vec(
                prop_oneof![
                    Just(b'/'), Just(b'.'), Just(b'%'), Just(b';'), Just(b'2'), Just(b'e'),
                    Just(b'E'), Just(b'f'), Just(b'a'), any::<u8>(),
                ],
                0..64,
            )
        ) {
            let mut input = vec![b'/'];
            input.extend_from_slice(&path);
            if let Ok(out) = normalise(&input) {
                prop_assert!(out.starts_with('/'));
                prop_assert!(out.is_ascii());
                prop_assert!(!has_dot_segment(&out), "{out:?}");
                prop_assert!(!out.contains("//"), "{out:?}");
                prop_assert_eq!(normalise(out.as_bytes()), Ok(out.clone()));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = normalise(&input);
        }
    }
}
