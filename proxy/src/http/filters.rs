//! The filters of a Gateway API route entry on a request and its response: the `Location` of
//! a `RequestRedirect`, `RequestHeaderModifier` and `URLRewrite` on the request sent upstream
//! (each attempt), `ResponseHeaderModifier` on the response sent back.

use config_model::route::{Redirect, RouteMatch};
use config_model::Route;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use super::route;
use crate::compiled::routes::{CompiledHeaders, RouteRuntime};

/// The `Location` of a redirect, as the Gateway API builds it: the redirect's scheme, host,
/// port and path where it sets them, the request's otherwise; a port only when not the
/// scheme's default (80 for http, 443 for https), and none from the request once the scheme
/// changes; the query string kept.
pub fn location(r: &Redirect, m: &RouteMatch, session: &Session) -> String {
    let req = session.req_header();
    let (req_host, req_port) = split_host_port(route::request_host(session).unwrap_or(""));
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let host = r.hostname.as_deref().unwrap_or(req_host);
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => req_port,
    }
    .filter(|&p| !matches!((scheme, p), ("http", 80) | ("https", 443)));
    let path = req.uri.path();
    let path = match &r.path {
        Some(modifier) => modifier.apply(path, m.prefix_len().unwrap_or(0)),
        None => path.to_string(),
    };
    let mut out = format!("{scheme}://{host}");
    if let Some(p) = port {
        out.push(':');
        out.push_str(itoa::Buffer::new().format(p));
    }
    out.push_str(&path);
    if let Some(q) = req.uri.query() {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// `host[:port]` or `[v6][:port]` split in two (a port that does not parse is ignored).
fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => (
                &authority[..=end],
                authority[end + 1..]
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok()),
            ),
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (authority, None),
    }
}

fn apply_request_headers(h: &CompiledHeaders, req: &mut RequestHeader) -> Result<()> {
    for name in h.remove.iter() {
        req.remove_header(name);
    }
    for (name, value) in h.set.iter() {
        req.insert_header(name, value.clone())?;
    }
    for (name, value) in h.add.iter() {
        req.append_header(name, value.clone())?;
    }
    Ok(())
}

/// `RequestHeaderModifier` and `URLRewrite` of the entry on the request sent upstream.
pub fn on_upstream_request(
    route: &Route,
    rt: &RouteRuntime,
    upstream: &mut RequestHeader,
) -> Result<()> {
    if let Some(h) = &rt.request_headers {
        apply_request_headers(h, upstream)?;
    }
    if let Some(host) = &rt.rewrite_host {
        upstream.insert_header(http::header::HOST, host.clone())?;
    }
    let Some(modifier) = route.filters.rewrite.as_ref().and_then(|r| r.path.as_ref()) else {
        return Ok(());
    };
    let path = modifier.apply(upstream.uri.path(), route.matches.prefix_len().unwrap_or(0));
    let target = match upstream.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let uri = http::Uri::try_from(target).map_err(|e| {
        Error::because(
            ErrorType::InternalError,
            "URLRewrite produced an invalid path",
            e,
        )
    })?;
    upstream.set_uri(uri);
    Ok(())
}

/// `ResponseHeaderModifier` of the entry on the response sent back.
pub fn on_response(rt: &RouteRuntime, resp: &mut ResponseHeader) -> Result<()> {
    let Some(h) = &rt.response_headers else {
        return Ok(());
    };
    for name in h.remove.iter() {
        resp.remove_header(name);
    }
    for (name, value) in h.set.iter() {
        resp.insert_header(name, value.clone())?;
    }
    for (name, value) in h.add.iter() {
        resp.append_header(name, value.clone())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_host_port("web.shop:8080"), ("web.shop", Some(8080)));
        assert_eq!(split_host_port("web.shop"), ("web.shop", None));
        assert_eq!(split_host_port("[::1]:80"), ("[::1]", Some(80)));
        assert_eq!(split_host_port("[::1]"), ("[::1]", None));
        assert_eq!(split_host_port("::1"), ("::1", None));
        assert_eq!(split_host_port("h:notaport"), ("h", None));
    }
}
