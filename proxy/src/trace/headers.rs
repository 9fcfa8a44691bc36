//! Trace context in request headers: W3C `traceparent`/`tracestate` first, B3 (single `b3`
//! header or `X-B3-*` headers) when there is no valid `traceparent`; the upstream request gets
//! `traceparent` always, and B3 in the encoding the client used.

//!
//! B3 is read and written here: OpenTelemetry Rust's only B3 propagator lives in its
//! deprecated Zipkin exporter crate, and the format is a few fixed fields
//! (<https://github.com/openzipkin/b3-propagation>).

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use pingora_http::RequestHeader;

/// Longest `tracestate` taken from a request; a longer one is dropped (W3C lets a vendor
/// drop it past 512 characters), the trace itself continues.
pub const TRACESTATE_MAX: usize = 512;

const B3_HEADERS: [&str; 6] = [
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// Which B3 encoding a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3 {
    /// One `b3` header.
    Single,
    /// `X-B3-TraceId`, `X-B3-SpanId`, ...
    Multi,
}

/// The trace a request belongs to, read from its headers.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The parent: a remote span context, or an empty context for a new trace.
    pub parent: Context,
    /// The B3 encoding the client used, if it sent B3 headers.
    pub b3: Option<B3>,
    /// Whether the parent is B3 without a sampling decision (the proxy makes it).
    pub deferred: bool,
}

/// Reads the trace context of `req`.
pub fn extract(req: &RequestHeader) -> Incoming {
    let headers = Headers(req);
    let b3 = if req.headers.contains_key("b3") {
        Some(B3::Single)
    } else if req.headers.contains_key("x-b3-traceid") {
        Some(B3::Multi)
    } else {
        None
    };
    if req.headers.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(&headers);
        if cx.span().span_context().is_valid() {
            return Incoming {
                parent: cx,
                b3,
                deferred: false,
            };
        }
    }
    let parsed = match b3 {
        Some(B3::Single) => headers.get("b3").and_then(parse_b3_single),
        Some(B3::Multi) => parse_b3_multi(&headers),
        None => None,
    };
    if let Some((trace_id, span_id, sampled)) = parsed {
        let flags = match sampled {
            Some(true) => TraceFlags::SAMPLED,
            _ => TraceFlags::default(),
        };
        let sc = SpanContext::new(trace_id, span_id, flags, true, Default::default());
        return Incoming {
            parent: Context::new().with_remote_span_context(sc),
            b3,
            deferred: sampled.is_none(),
        };
    }
    Incoming {
        parent: Context::new(),
        b3,
        deferred: false,
    }
}

/// Writes `span` as the parent of the upstream request: `traceparent` (and `tracestate`),
/// and B3 headers in the encoding `b3` when the client sent B3. Stale incoming trace headers
/// are removed first, so the upstream never sees two different parents.
pub fn inject(span: &SpanContext, b3: Option<B3>, req: &mut RequestHeader) {
    req.remove_header("tracestate");
    let cx = Context::new().with_remote_span_context(span.clone());
    TraceContextPropagator::new().inject_context(&cx, &mut HeadersMut(req));
    if span.trace_state().header().is_empty() {
        req.remove_header("tracestate");
    }
    if let Some(b3) = b3 {
        for h in B3_HEADERS {
            req.remove_header(h);
        }
        let sampled = if span.is_sampled() { "1" } else { "0" };
        let mut out = HeadersMut(req);
        match b3 {
            B3::Single => out.set(
                "b3",
                format!("{}-{}-{sampled}", span.trace_id(), span.span_id()),
            ),
            B3::Multi => {
                out.set("x-b3-traceid", span.trace_id().to_string());
                out.set("x-b3-spanid", span.span_id().to_string());
                out.set("x-b3-sampled", sampled.to_string());
            }
        }
    }
}

/// `{trace id}-{span id}[-{sampling}[-{parent span id}]]`; the sampling state is `None` when
/// absent (the receiver decides).
fn parse_b3_single(v: &str) -> Option<(TraceId, SpanId, Option<bool>)> {
    let mut parts = v.split('-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id = b3_span_id(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some("1" | "d") => Some(true),
        Some("0") => Some(false),
        Some(_) => return None,
    };
    if let Some(parent) = parts.next() {
        b3_span_id(parent)?;
    }
    parts
        .next()
        .is_none()
        .then_some((trace_id, span_id, sampled))
}

/// `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled` (`1`/`0`, or `true`/`false` of old
/// clients), `X-B3-Flags: 1` (debug, implies sampled).
fn parse_b3_multi(h: &Headers<'_>) -> Option<(TraceId, SpanId, Option<bool>)> {
    let trace_id = b3_trace_id(h.get("x-b3-traceid")?)?;
    let span_id = b3_span_id(h.get("x-b3-spanid")?)?;
    let sampled = if h.get("x-b3-flags") == Some("1") {
        Some(true)
    } else {
        match h.get("x-b3-sampled") {
            None => None,
            Some("1" | "true") => Some(true),
            Some("0" | "false") => Some(false),
            Some(_) => return None,
        }
    };
    Some((trace_id, span_id, sampled))
}

fn lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// 32 or 16 lower-case hex digits (a 64-bit id is the low half), not all zero.
fn b3_trace_id(s: &str) -> Option<TraceId> {
    if !(s.len() == 32 || s.len() == 16) || !lower_hex(s) {
        return None;
    }
    let id = u128::from_str_radix(s, 16).ok()?;
    (id != 0).then(|| TraceId::from(id))
}

/// 16 lower-case hex digits, not all zero.
fn b3_span_id(s: &str) -> Option<SpanId> {
    if s.len() != 16 || !lower_hex(s) {
        return None;
    }
    let id = u64::from_str_radix(s, 16).ok()?;
    (id != 0).then(|| SpanId::from(id))
}

struct Headers<'a>(&'a RequestHeader);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let v = self.0.headers.get(key)?.to_str().ok()?;
        if key == "tracestate" && v.len() > TRACESTATE_MAX {
            return None;
        }
        Some(v)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.headers.keys().map(|k| k.as_str()).collect()
    }
}

struct HeadersMut<'a>(&'a mut RequestHeader);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let Err(e) = self.0.insert_header(key.to_string(), value) {
            tracing::debug!(error = %e, header = key, "Could not set trace header");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceId};

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn parent(i: &Incoming) -> SpanContext {
        i.parent.span().span_context().clone()
    }

    #[test]
    fn w3c_parent_with_tracestate() {
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let i = extract(&req(&[("traceparent", &tp), ("tracestate", "a=1,b=2")]));
        let p = parent(&i);
        assert_eq!(p.trace_id(), TraceId::from_hex(TRACE).unwrap());
        assert_eq!(p.span_id(), SpanId::from_hex(SPAN).unwrap());
        assert!(p.is_sampled() && p.is_remote());
        assert_eq!(p.trace_state().header(), "a=1,b=2");
        assert_eq!(i.b3, None);
    }

    #[test]
    fn bad_traceparent_starts_a_new_trace_and_long_tracestate_is_dropped() {
        for bad in [
            "00-xyz-00f067aa0ba902b7-01",
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert!(
                !parent(&extract(&req(&[("traceparent", bad)]))).is_valid(),
                "{bad:?}"
            );
        }
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let long = format!("a={}", "x".repeat(TRACESTATE_MAX));
        let p = parent(&extract(&req(&[
            ("traceparent", &tp),
            ("tracestate", &long),
        ])));
        assert!(p.is_valid());
        assert_eq!(p.trace_state().header(), "");
    }

    #[test]
    fn b3_single_and_multi() {
        let i = extract(&req(&[("b3", &format!("{TRACE}-{SPAN}-1"))]));
        assert_eq!(i.b3, Some(B3::Single));
        assert_eq!(parent(&i).trace_id(), TraceId::from_hex(TRACE).unwrap());
        assert!(parent(&i).is_sampled() && !i.deferred);
        let i = extract(&req(&[
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-Sampled", "0"),
        ]));
        assert_eq!(i.b3, Some(B3::Multi));
        assert_eq!(parent(&i).span_id(), SpanId::from_hex(SPAN).unwrap());
        assert!(!parent(&i).is_sampled());
        // No sampling decision: the proxy takes it.
        let i = extract(&req(&[("b3", &format!("{TRACE}-{SPAN}"))]));
        assert!(i.deferred);
        assert_eq!(parent(&i).trace_flags(), TraceFlags::default());
        // 64-bit trace ids, debug, parent span id.
        let i = extract(&req(&[(
            "b3",
            &format!("a3ce929d0e0e4736-{SPAN}-d-{SPAN}"),
        )]));
        assert_eq!(parent(&i).trace_id(), TraceId::from(0xa3ce929d0e0e4736u128));
        assert!(parent(&i).is_sampled());
        let i = extract(&req(&[
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-Flags", "1"),
        ]));
        assert!(parent(&i).is_sampled() && !i.deferred);
    }

    #[test]
    fn bad_b3_starts_a_new_trace() {
        for bad in [
            format!("{}-{SPAN}-1", TRACE.to_uppercase()),
            format!("{TRACE}-{SPAN}-x"),
            format!("{TRACE}-{SPAN}-1-{SPAN}-extra"),
            format!("{TRACE}-0000000000000000-1"),
            TRACE.to_string(),
            "0".to_string(),
            format!("{TRACE}x-{SPAN}"),
        ] {
            let i = extract(&req(&[("b3", &bad)]));
            assert!(!parent(&i).is_valid(), "{bad:?}");
        }
    }

    #[test]
    fn traceparent_wins_over_b3() {
        let other = "11111111111111111111111111111111";
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let i = extract(&req(&[
            ("traceparent", &tp),
            ("b3", &format!("{other}-{SPAN}-1")),
        ]));
        assert_eq!(parent(&i).trace_id(), TraceId::from_hex(TRACE).unwrap());
        assert_eq!(i.b3, Some(B3::Single), "B3 is still sent on");
    }

    #[test]
    fn inject_replaces_stale_headers() {
        let own = SpanContext::new(
            TraceId::from_hex(TRACE).unwrap(),
            SpanId::from_hex("1111111111111111").unwrap(),
            TraceFlags::SAMPLED,
            false,
            Default::default(),
        );
        let mut r = req(&[
            ("traceparent", "garbage"),
            ("tracestate", "stale=1"),
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-ParentSpanId", "2222222222222222"),
            ("X-B3-Sampled", "1"),
        ]);
        inject(&own, Some(B3::Multi), &mut r);
        let h = |k: &str| r.headers.get(k).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            h("traceparent").unwrap(),
            format!("00-{TRACE}-1111111111111111-01")
        );
        assert_eq!(h("tracestate"), None);
        assert_eq!(h("x-b3-spanid").as_deref(), Some("1111111111111111"));
        assert_eq!(h("x-b3-parentspanid"), None);
        assert_eq!(h("x-b3-sampled").as_deref(), Some("1"));
        assert_eq!(r.headers.get_all("traceparent").iter().count(), 1);
        let mut r = req(&[("b3", "whatever")]);
        inject(&own, Some(B3::Single), &mut r);
        assert_eq!(
            r.headers.get("b3").unwrap().to_str().unwrap(),
            format!("{TRACE}-1111111111111111-1")
        );
    }
}
