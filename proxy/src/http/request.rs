//! Checks of a request head before it is routed: one well-formed `Host`, an unambiguous body
//! length, and a request path in normalised form (see [`super::path`]). What fails is answered
//! with 400 and a short reason, and the connection is closed after it.

use http::header;
use http::uri::{PathAndQuery, Uri};
use pingora_core::protocols::http::authority::{raw_target_authority, RawTargetAuthority};
use pingora_http::RequestHeader;

use super::path;

/// Longest part of a client's value quoted back in a 400 body.
const QUOTE_MAX: usize = 64;

/// A request refused before routing (always 400), with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl BadRequest {
    /// The plain-text body of the 400.
    pub fn body(&self) -> String {
        format!("maille: bad request: {}\n", self.0)
    }
}

/// `bytes` as a quoted string, cut to [`QUOTE_MAX`] bytes.
fn quote(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(QUOTE_MAX)];
    let more = if bytes.len() > QUOTE_MAX { "..." } else { "" };
    format!("{:?}{more}", String::from_utf8_lossy(cut))
}

/// Whether `host` is `name[:port]`, `IPv4[:port]` or `[IPv6][:port]`: no userinfo, no path,
/// a port of one to five digits up to 65535.
pub fn valid_host(host: &[u8]) -> bool {
    if host.is_empty() || host.len() > 262 {
        return false;
    }
    let (name, port) = if let Some(rest) = host.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match &rest[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (None, port),
            _ => return false,
        }
    } else {
        match host.iter().rposition(|&b| b == b':') {
            Some(i) => (Some(&host[..i]), &host[i + 1..]),
            None => (Some(host), &[][..]),
        }
    };
    if let Some(name) = name {
        if name.is_empty()
            || !name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return false;
        }
    }
    if port.is_empty() {
        // `name:` (an empty port) is refused along with a missing one after `]:`.
        return !host.ends_with(b":");
    }
    port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(port)
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
            .is_some()
}

/// RFC 9112 section 6.3: one `Content-Length` of digits only; several (even equal ones, or a
/// list such as `3, 3`) and one next to `Transfer-Encoding` are refused, never forwarded.
fn check_body_length(req: &RequestHeader) -> Result<(), BadRequest> {
    let mut lengths = req.headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = lengths.next() else {
        return Ok(());
    };
    if lengths.next().is_some() {
        return Err(BadRequest("more than one Content-Length header".into()));
    }
    let v = first.as_bytes();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(BadRequest(format!(
            "Content-Length {} is not a single decimal length",
            quote(v)
        )));
    }
    if req.headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(BadRequest(
            "both Content-Length and Transfer-Encoding (request smuggling risk)".into(),
        ));
    }
    Ok(())
}

/// The Host the request is routed by: the one `Host` header, or for HTTP/1 absolute-form
/// (`GET http://host/path`) the target's authority, which RFC 9112 section 3.2.2 puts first.
/// HTTP/2's `:authority` when it has no `Host`.
fn check_host(req: &mut RequestHeader, absolute: Option<Vec<u8>>) -> Result<(), BadRequest> {
    let mut hosts = req.headers.get_all(header::HOST).iter();
    let host = hosts.next().map(|h| h.as_bytes().to_vec());
    if hosts.next().is_some() {
        return Err(BadRequest("more than one Host header".into()));
    }
    let host = match (absolute, host) {
        (Some(authority), _) => {
            if !valid_host(&authority) {
                return Err(BadRequest(format!(
                    "request-target authority {} is not host[:port]",
                    quote(&authority)
                )));
            }
            let value = http::HeaderValue::from_bytes(&authority)
                .map_err(|_| BadRequest("request-target authority is not a header value".into()))?;
            // The authority wins over a differing Host; the upstream gets the same one.
            req.insert_header(header::HOST, value)
                .map_err(|_| BadRequest("cannot set Host".into()))?;
            return Ok(());
        }
        (None, Some(h)) => h,
        (None, None) => match req.uri.authority() {
            Some(a) => a.as_str().as_bytes().to_vec(),
            None => {
                return Err(BadRequest(
                    "no Host header (the mesh routes requests by Host)".into(),
                ))
            }
        },
    };
    if !valid_host(&host) {
        return Err(BadRequest(format!(
            "Host {} is not host[:port]",
            quote(&host)
        )));
    }
    Ok(())
}

/// Checks the head of `req` and rewrites its target to the normalised path (query untouched,
/// absolute-form turned into origin-form). The path that routing and access rules see and
/// that the upstream receives is then `req.uri.path()`.
pub fn check_and_normalise(req: &mut RequestHeader) -> Result<(), BadRequest> {
    check_body_length(req)?;
    let raw = req.raw_path().to_vec();
    if raw == b"*" {
        // `OPTIONS *` (asterisk-form) has no path to normalise.
        return check_host(req, None);
    }
    let (absolute, path_and_query) = match raw_target_authority(&raw) {
        RawTargetAuthority::None => (None, &raw[..]),
        RawTargetAuthority::Absolute {
            authority,
            path_and_query,
            ..
        } => (Some(authority.to_vec()), path_and_query),
        RawTargetAuthority::AmbiguousAuthority => {
            return Err(BadRequest(format!(
                "request target {} has an ambiguous authority",
                quote(&raw)
            )))
        }
    };
    let absolute_form = absolute.is_some();
    check_host(req, absolute)?;
    let (path, query) = match path_and_query.iter().position(|&b| b == b'?') {
        Some(i) => (&path_and_query[..i], Some(&path_and_query[i..])),
        None => (path_and_query, None),
    };
    // `http://host` and `http://host?q` have an empty path: it is `/`.
    let path = if path.is_empty() { &b"/"[..] } else { path };
    let normal = path::normalise(path)
        .map_err(|e| BadRequest(format!("request path {}: {e}", quote(path))))?;
    if !absolute_form && normal.as_bytes() == path && req.raw_path_is_utf8() {
        return Ok(());
    }
    let mut target = normal;
    if let Some(q) = query {
        target.push_str(&String::from_utf8_lossy(q));
    }
    let pq = PathAndQuery::try_from(target)
        .map_err(|_| BadRequest(format!("request target {} is not valid", quote(&raw))))?;
    let mut parts = http::uri::Parts::default();
    // HTTP/2 carries scheme and authority in the URI: keep them.
    if !absolute_form {
        parts.scheme = req.uri.scheme().cloned();
        parts.authority = req.uri.authority().cloned();
    }
    parts.path_and_query = Some(pq);
    let uri = Uri::from_parts(parts)
        .map_err(|_| BadRequest(format!("request target {} is not valid", quote(&raw))))?;
    req.set_uri(uri);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn hosts_must_be_name_or_address_with_a_numeric_port() {
        for good in [
            "web.shop.maille.mesh",
            "web.shop.maille.mesh.",
            "WEB.shop:5000",
            "10.96.0.7",
            "10.96.0.7:80",
            "[::1]",
            "[fd00::7]:8080",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            "name:abc",
            "name:",
            "name:65536",
            "name:123456",
            "a b",
            "a/b",
            "user@host",
            "a:1:2",
            "[::1",
            "[::1]x",
            "[]",
            ":80",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn rewrites_to_the_normalised_path_and_keeps_the_query() {
        let mut r = head("/api/%2e%2e/admin?x=%2e%2e&y", &[("host", "a")]);
        check_and_normalise(&mut r).unwrap();
        assert_eq!(r.uri.path(), "/admin");
        assert_eq!(r.raw_path(), b"/admin?x=%2e%2e&y");
        let mut r = head("http://api.shop/api/../admin?q", &[("host", "other")]);
        check_and_normalise(&mut r).unwrap();
        assert_eq!(r.raw_path(), b"/admin?q");
        assert_eq!(r.headers.get("host").unwrap(), "api.shop");
    }

    #[test]
    fn refusals_name_the_value() {
        let e = check_and_normalise(&mut head("/a%2fb", &[("host", "a")])).unwrap_err();
        assert_eq!(
            e.body(),
            "maille: bad request: request path \"/a%2fb\": an encoded / (%2F) in a segment is ambiguous\n"
        );
        let e = check_and_normalise(&mut head("/", &[("host", "name:abc")])).unwrap_err();
        assert!(e.0.contains("\"name:abc\""), "{e:?}");
        let long = "x".repeat(1000);
        let e = check_and_normalise(&mut head("/", &[("host", &long)])).unwrap_err();
        assert!(e.0.len() < 120, "value cut: {e:?}");
        let e = check_and_normalise(&mut head("/", &[("host", "a"), ("content-length", "3, 3")]))
            .unwrap_err();
        assert!(e.0.contains("\"3, 3\""), "{e:?}");
        let two = [
            ("host", "a"),
            ("content-length", "3"),
            ("content-length", "3"),
        ];
        assert!(check_and_normalise(&mut head("/", &two)).is_err());
        assert!(check_and_normalise(&mut head("/", &[])).is_err());
    }
}
