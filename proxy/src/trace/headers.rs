//! Trace context in request headers: W3C `traceparent`/`tracestate` first, B3 (single `b3`
//! header or `X-B3-*` headers) when there is no valid `traceparent`; the upstream request gets
//! `traceparent` always, and B3 in the encoding the client used.
//!
//! Read and written here without the OpenTelemetry propagators and without a heap allocation of
//! their own: most requests are not sampled, and theirs is the path that must cost nothing
//! (issue 17). The formats are a few fixed fields:
//! <https://www.w3.org/TR/trace-context/> and <https://github.com/openzipkin/b3-propagation>
//! (OpenTelemetry Rust's only B3 propagator lives in its deprecated Zipkin exporter crate).

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanId, TraceId, TraceState};
use pingora_http::RequestHeader;

/// Longest `tracestate` taken from a request (all its lines together); a longer one is
/// dropped (W3C lets a vendor drop it past 512 characters), the trace itself continues.
pub const TRACESTATE_MAX: usize = 512;

/// Most list members W3C allows in a `tracestate`.
const TRACESTATE_MEMBERS_MAX: usize = 32;

// The names looked up and removed, built once: a lookup or removal by `&str` parses and
// lower-cases the name on every request (a few hundred instructions each, issue 17), one by
// `&HeaderName` only hashes it. Inserts still go by `&'static str`: Pingora's `insert_header`
// parses the name whatever it is given, and a static `&str` at least needs no copy for its
// case map.
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static B3_SINGLE: HeaderName = HeaderName::from_static("b3");
static X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
static X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
static X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

static B3_HEADERS: [&HeaderName; 6] = [
    &B3_SINGLE,
    &X_B3_TRACEID,
    &X_B3_SPANID,
    &X_B3_PARENTSPANID,
    &X_B3_SAMPLED,
    &X_B3_FLAGS,
];

/// Which B3 encoding a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3 {
    /// One `b3` header.
    Single,
    /// `X-B3-TraceId`, `X-B3-SpanId`, ...
    Multi,
}

/// The client's span a request continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// Its trace.
    pub trace_id: TraceId,
    /// Its span, the parent of the proxy's.
    pub span_id: SpanId,
    /// Its sampling decision; `None` when a B3 parent left the decision to the proxy.
    pub sampled: Option<bool>,
}

/// The trace a request belongs to, read from its headers (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    /// The parent, or `None` for a new trace.
    pub parent: Option<Parent>,
    /// The B3 encoding the client used, if it sent B3 headers.
    pub b3: Option<B3>,
    /// Whether the request's `tracestate` goes on with the trace: the parent came from a
    /// valid `traceparent` and the state is a valid W3C list of at most [`TRACESTATE_MAX`]
    /// characters. Otherwise it is removed from the upstream request.
    pub tracestate: bool,
    /// Whether the request has a `tracestate` header at all (one not kept is removed).
    pub tracestate_sent: bool,
}

impl Incoming {
    /// Whether the upstream request must lose the client's `tracestate`.
    pub fn drops_tracestate(&self) -> bool {
        self.tracestate_sent && !self.tracestate
    }
}

/// The proxy's own span as the upstream request names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    /// The trace (the parent's, or a new one).
    pub trace_id: TraceId,
    /// The proxy's span id: the upstream's parent.
    pub span_id: SpanId,
    /// Whether the proxy samples (records and exports) its span.
    pub sampled: bool,
}

/// Reads the trace context of `req`.
pub fn extract(req: &RequestHeader) -> Incoming {
    let seen = Present::of(req);
    let b3 = if seen.b3 {
        Some(B3::Single)
    } else if seen.x_b3_traceid {
        Some(B3::Multi)
    } else {
        None
    };
    let w3c = seen
        .traceparent
        .then(|| get(req, &TRACEPARENT).and_then(parse_traceparent))
        .flatten();
    if let Some(parent) = w3c {
        return Incoming {
            parent: Some(parent),
            b3,
            tracestate: !seen.tracestate || tracestate_valid(req),
            tracestate_sent: seen.tracestate,
        };
    }
    let parent = match b3 {
        Some(B3::Single) => get(req, &B3_SINGLE).and_then(parse_b3_single),
        Some(B3::Multi) => parse_b3_multi(req),
        None => None,
    };
    Incoming {
        parent,
        b3,
        tracestate: false,
        tracestate_sent: seen.tracestate,
    }
}

/// The trace headers a request carries, found in one pass over its header names. A lookup
/// per name hashes that name each time; a request without any trace context (every request
/// that starts a trace) then costs only a walk over its names, and one with some only the
/// lookups of what it has.
#[derive(Debug, Default)]
struct Present {
    traceparent: bool,
    tracestate: bool,
    b3: bool,
    x_b3_traceid: bool,
}

impl Present {
    fn of(req: &RequestHeader) -> Present {
        let mut p = Present::default();
        for name in req.headers.keys() {
            match name.as_str() {
                "traceparent" => p.traceparent = true,
                "tracestate" => p.tracestate = true,
                "b3" => p.b3 = true,
                "x-b3-traceid" => p.x_b3_traceid = true,
                _ => {}
            }
        }
        p
    }
}

/// The request's `tracestate` as the OpenTelemetry SDK holds it (for a sampled span, whose
/// exported data carries it); empty unless [`Incoming::tracestate`].
pub fn trace_state(req: &RequestHeader, incoming: &Incoming) -> TraceState {
    if !incoming.tracestate {
        return TraceState::default();
    }
    let lines: Vec<&str> = req
        .headers
        .get_all(&TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    lines.join(",").parse().unwrap_or_default()
}

/// The value of the header `name`, when there is exactly one and it is text.
fn get<'a>(req: &'a RequestHeader, name: &HeaderName) -> Option<&'a str> {
    let mut all = req.headers.get_all(name).iter();
    let v = all.next()?;
    if all.next().is_some() {
        return None;
    }
    v.to_str().ok()
}

/// `{version}-{trace id}-{parent id}-{flags}` (W3C Trace Context, level 1): version `00` has
/// exactly these four fields; a later version may append more after a `-`, which are ignored.
fn parse_traceparent(v: &str) -> Option<Parent> {
    let v = v.trim_matches([' ', '\t']).as_bytes();
    if v.len() < 55 || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let version = hex_u64(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = hex_u128(&v[3..35]).filter(|id| *id != 0)?;
    let span_id = hex_u64(&v[36..52]).filter(|id| *id != 0)?;
    let flags = hex_u64(&v[53..55])?;
    Some(Parent {
        trace_id: TraceId::from(trace_id),
        span_id: SpanId::from(span_id),
        sampled: Some(flags & 1 == 1),
    })
}

/// Whether the request's `tracestate` lines form one valid W3C list (at most 32 members of
/// `key=value`, [`TRACESTATE_MAX`] characters in all), checked without copying it.
fn tracestate_valid(req: &RequestHeader) -> bool {
    let mut total = 0;
    let mut members = 0;
    for line in req.headers.get_all(&TRACESTATE) {
        total += line.len() + 1;
        if total > TRACESTATE_MAX + 1 {
            return false;
        }
        let Ok(line) = line.to_str() else {
            return false;
        };
        for member in line.split(',') {
            let member = member.trim_matches([' ', '\t']);
            if member.is_empty() {
                continue;
            }
            members += 1;
            if members > TRACESTATE_MEMBERS_MAX || !tracestate_member(member) {
                return false;
            }
        }
    }
    true
}

/// `key=value`: a key of lower-case letters, digits and `_-*/` starting with a letter (or
/// `tenant@system`), a value of printable characters but `,` and `=`, not ending in a space.
fn tracestate_member(m: &str) -> bool {
    let Some((key, value)) = m.split_once('=') else {
        return false;
    };
    let key_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-*/".contains(&c);
    let key_ok = match key.split_once('@') {
        None => {
            key.len() <= 256
                && key.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
                && key.bytes().all(key_char)
        }
        Some((tenant, system)) => {
            (1..=241).contains(&tenant.len())
                && tenant
                    .as_bytes()
                    .first()
                    .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && tenant.bytes().all(key_char)
                && (1..=14).contains(&system.len())
                && system.as_bytes()[0].is_ascii_lowercase()
                && system.bytes().all(key_char)
        }
    };
    key_ok
        && (1..=256).contains(&value.len())
        && !value.ends_with(' ')
        && value
            .bytes()
            .all(|c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
}

/// Writes the proxy's span as the parent of the upstream request: `traceparent`, the client's
/// `tracestate` removed when `drop_tracestate` ([`Incoming::drops_tracestate`]), and B3
/// headers in the encoding `b3` when the client sent B3. Stale incoming trace headers are
/// replaced, so the upstream never sees two parents.
///
/// The upstream request is Pingora's copy of the client's, whose header maps (values, and
/// names as the client wrote them) are sized to exactly its headers. Pingora's
/// `insert_header` would parse and copy the name twice and grow both maps: about 1,800
/// instructions of the 2,500 that tracing cost a request that is not sampled (issue 17).
/// Instead the request is rebuilt around one map sized for the headers to come, the names
/// written from constants, and without the map of name cases: header names go upstream in
/// lower case but for a dozen common ones Pingora capitalises (`Host`, `Content-Type`,
/// `Content-Length`, ...), as Pingora sends a request that came over HTTP/2 and as Envoy and
/// HAProxy send every request; HTTP names are case-insensitive (RFC 9110, section 5.1).
/// Method, target (as it is on the wire), version and extensions are kept.
pub fn inject(own: &Outgoing, drop_tracestate: bool, b3: Option<B3>, req: &mut RequestHeader) {
    let written = rebuilt(req, |headers| {
        write(own, drop_tracestate, b3, headers);
    });
    match written {
        Some(r) => *req = r,
        // Only past the header map's size limit, or for a target that does not parse again:
        // Pingora's own way, in place.
        None => inject_in_place(own, drop_tracestate, b3, req),
    }
}

/// [`inject`] through Pingora's `insert_header` and `remove_header`.
fn inject_in_place(own: &Outgoing, drop_tracestate: bool, b3: Option<B3>, req: &mut RequestHeader) {
    let mut headers = HeaderMap::new();
    write(own, drop_tracestate, b3, &mut headers);
    if drop_tracestate {
        req.remove_header(&TRACESTATE);
    }
    if b3.is_some() {
        for h in B3_HEADERS {
            req.remove_header(h);
        }
    }
    for (name, value) in headers {
        let Some(name) = name else { continue };
        if let Err(e) = req.insert_header(name.as_str().to_string(), value) {
            tracing::debug!(error = %e, header = name.as_str(), "Could not set trace header");
        }
    }
}

/// Room for the trace headers [`write`] may add to a request's.
const TRACE_HEADERS_MAX: usize = 3;

/// `req` with its headers in one map of room for [`TRACE_HEADERS_MAX`] more, changed by
/// `edit`, and no map of name cases; `None` when such a map cannot be made (more headers than
/// the map's limit) or the target does not take again.
fn rebuilt(req: &RequestHeader, edit: impl FnOnce(&mut HeaderMap)) -> Option<RequestHeader> {
    let mut headers =
        HeaderMap::try_with_capacity(req.headers.keys_len() + TRACE_HEADERS_MAX).ok()?;
    for (name, value) in &req.headers {
        headers.try_append(name.clone(), value.clone()).ok()?;
    }
    edit(&mut headers);
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = req.method.clone();
    parts.uri = req.uri.clone();
    parts.version = req.version;
    parts.extensions = req.extensions.clone();
    parts.headers = headers;
    let mut out = RequestHeader::from(parts);
    // An absolute-form or non-UTF-8 target is kept apart from the URI: take it again.
    if out.raw_path() != req.raw_path() {
        out.set_raw_path(req.raw_path()).ok()?;
    }
    if let Some(end) = req.send_end_stream() {
        out.set_send_end_stream(end);
    }
    Some(out)
}

/// The trace headers of `own` written into `headers` (see [`inject`]); the values are built on
/// the stack, the map copies them, and the names are constants (no parse, no copy).
fn write(own: &Outgoing, drop_tracestate: bool, b3: Option<B3>, headers: &mut HeaderMap) {
    let trace = hex32(own.trace_id);
    let span = hex16(own.span_id);
    let mut tp = [0u8; 55];
    tp[..3].copy_from_slice(b"00-");
    tp[3..35].copy_from_slice(&trace);
    tp[35] = b'-';
    tp[36..52].copy_from_slice(&span);
    tp[52..].copy_from_slice(if own.sampled { b"-01" } else { b"-00" });
    set(headers, &TRACEPARENT, &tp);
    if drop_tracestate {
        headers.remove(&TRACESTATE);
    }
    let Some(b3) = b3 else {
        return;
    };
    for h in B3_HEADERS {
        headers.remove(h);
    }
    let sampled: &'static str = if own.sampled { "1" } else { "0" };
    match b3 {
        B3::Single => {
            let mut v = [0u8; 51];
            v[..32].copy_from_slice(&trace);
            v[32] = b'-';
            v[33..49].copy_from_slice(&span);
            v[49] = b'-';
            v[50] = sampled.as_bytes()[0];
            set(headers, &B3_SINGLE, &v);
        }
        B3::Multi => {
            set(headers, &X_B3_TRACEID, &trace);
            set(headers, &X_B3_SPANID, &span);
            headers.insert(X_B3_SAMPLED.clone(), HeaderValue::from_static(sampled));
        }
    }
}

/// Sets `name` to `value` (hex digits and dashes, always a valid header value).
fn set(headers: &mut HeaderMap, name: &HeaderName, value: &[u8]) {
    match HeaderValue::from_bytes(value) {
        Ok(v) => {
            headers.insert(name.clone(), v);
        }
        Err(e) => tracing::debug!(error = %e, header = name.as_str(), "Could not set trace header"),
    }
}

/// Each byte's two lower-case hex digits: one lookup per byte rather than two (the ids of
/// every request, sampled or not, are written this way).
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    pairs
};

/// `N` bytes as `2 * N` lower-case hex digits.
fn hex<const N: usize, const H: usize>(bytes: [u8; N]) -> [u8; H] {
    const { assert!(H == 2 * N) };
    let mut out = [0u8; H];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
    }
    out
}

fn hex32(id: TraceId) -> [u8; 32] {
    hex(id.to_bytes())
}

fn hex16(id: SpanId) -> [u8; 16] {
    hex(id.to_bytes())
}

/// Lower-case hex digits only (W3C and B3 both refuse upper case).
fn lower_hex(s: &[u8]) -> bool {
    s.iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

fn hex_u128(s: &[u8]) -> Option<u128> {
    if s.is_empty() || s.len() > 32 || !lower_hex(s) {
        return None;
    }
    u128::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

fn hex_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || !lower_hex(s) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

/// `{trace id}-{span id}[-{sampling}[-{parent span id}]]`; the sampling state is `None` when
/// absent (the receiver decides).
fn parse_b3_single(v: &str) -> Option<Parent> {
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
    parts.next().is_none().then_some(Parent {
        trace_id,
        span_id,
        sampled,
    })
}

/// `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled` (`1`/`0`, or `true`/`false` of old
/// clients), `X-B3-Flags: 1` (debug, implies sampled).
fn parse_b3_multi(req: &RequestHeader) -> Option<Parent> {
    let trace_id = b3_trace_id(get(req, &X_B3_TRACEID)?)?;
    let span_id = b3_span_id(get(req, &X_B3_SPANID)?)?;
    let sampled = if get(req, &X_B3_FLAGS) == Some("1") {
        Some(true)
    } else {
        match get(req, &X_B3_SAMPLED) {
            None => None,
            Some("1" | "true") => Some(true),
            Some("0" | "false") => Some(false),
            Some(_) => return None,
        }
    };
    Some(Parent {
        trace_id,
        span_id,
        sampled,
    })
}

/// 32 or 16 lower-case hex digits (a 64-bit id is the low half), not all zero.
fn b3_trace_id(s: &str) -> Option<TraceId> {
    if !(s.len() == 32 || s.len() == 16) {
        return None;
    }
    let id = hex_u128(s.as_bytes())?;
    (id != 0).then(|| TraceId::from(id))
}

/// 16 lower-case hex digits, not all zero.
fn b3_span_id(s: &str) -> Option<SpanId> {
    if s.len() != 16 {
        return None;
    }
    let id = hex_u64(s.as_bytes())?;
    (id != 0).then(|| SpanId::from(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn parent(i: &Incoming) -> Parent {
        i.parent.expect("a parent")
    }

    fn trace() -> TraceId {
        TraceId::from_hex(TRACE).unwrap()
    }

    #[test]
    fn w3c_parent_with_tracestate() {
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let r = req(&[("traceparent", &tp), ("tracestate", "a=1,b=2")]);
        let i = extract(&r);
        let p = parent(&i);
        assert_eq!(p.trace_id, trace());
        assert_eq!(p.span_id, SpanId::from_hex(SPAN).unwrap());
        assert_eq!(p.sampled, Some(true));
        assert!(i.tracestate);
        assert_eq!(trace_state(&r, &i).header(), "a=1,b=2");
        assert_eq!(i.b3, None);
        // Flags 00: not sampled; unknown flags are ignored; a later version may add fields.
        let i = extract(&req(&[("traceparent", &format!("00-{TRACE}-{SPAN}-00"))]));
        assert_eq!(parent(&i).sampled, Some(false));
        assert!(i.tracestate, "no tracestate is a valid (empty) one");
        let i = extract(&req(&[("traceparent", &format!("00-{TRACE}-{SPAN}-09"))]));
        assert_eq!(parent(&i).sampled, Some(true));
        let i = extract(&req(&[(
            "traceparent",
            &format!("cc-{TRACE}-{SPAN}-01-what"),
        )]));
        assert_eq!(parent(&i).trace_id, trace());
        // Two lines of tracestate are one list.
        let r = req(&[
            ("traceparent", &tp),
            ("tracestate", "a=1"),
            ("tracestate", "t@sys=x y"),
        ]);
        let i = extract(&r);
        assert!(i.tracestate);
        assert_eq!(trace_state(&r, &i).header(), "a=1,t@sys=x y");
    }

    #[test]
    fn bad_traceparent_starts_a_new_trace_and_bad_or_long_tracestate_is_dropped() {
        for bad in [
            "00-xyz-00f067aa0ba902b7-01".to_string(),
            String::new(),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".into(),
            format!("00-{TRACE}-0000000000000000-01"),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-0x"),
            format!("00-{TRACE}-{SPAN}x01"),
            format!("00-{TRACE}-{SPAN}-01").replace('-', "_"),
            format!("cc-{TRACE}-{SPAN}-01x"),
        ] {
            let i = extract(&req(&[("traceparent", &bad), ("tracestate", "a=1")]));
            assert_eq!(i.parent, None, "{bad:?}");
            assert!(
                !i.tracestate,
                "{bad:?}: no tracestate without its traceparent"
            );
        }
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let two = req(&[("traceparent", &tp), ("traceparent", &tp)]);
        assert_eq!(extract(&two).parent, None, "two parents: none is trusted");
        let long = format!("a={}", "x".repeat(TRACESTATE_MAX));
        let many = (0..33)
            .map(|n| format!("k{n}=v"))
            .collect::<Vec<_>>()
            .join(",");
        for bad in [
            long.as_str(),
            many.as_str(),
            "A=1",
            "a",
            "a=",
            "a=1=",
            "1a=1",
            "a=b=c",
            "a@=1",
            "a@toolongsystemid=1",
        ] {
            let r = req(&[("traceparent", &tp), ("tracestate", bad)]);
            let i = extract(&r);
            assert_eq!(parent(&i).trace_id, trace(), "{bad:?}: the trace goes on");
            assert!(!i.tracestate, "{bad:?}");
            assert_eq!(trace_state(&r, &i).header(), "");
        }
        let ok = "a=1, ,b-c/d*e_f=x~y, 0t@s=v";
        assert!(extract(&req(&[("traceparent", &tp), ("tracestate", ok)])).tracestate);
    }

    #[test]
    fn b3_single_and_multi() {
        let i = extract(&req(&[("b3", &format!("{TRACE}-{SPAN}-1"))]));
        assert_eq!(i.b3, Some(B3::Single));
        assert_eq!(parent(&i).trace_id, trace());
        assert_eq!(parent(&i).sampled, Some(true));
        let i = extract(&req(&[
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-Sampled", "0"),
        ]));
        assert_eq!(i.b3, Some(B3::Multi));
        assert_eq!(parent(&i).span_id, SpanId::from_hex(SPAN).unwrap());
        assert_eq!(parent(&i).sampled, Some(false));
        assert!(!i.tracestate, "B3 carries no tracestate");
        // No sampling decision: the proxy takes it.
        let i = extract(&req(&[("b3", &format!("{TRACE}-{SPAN}"))]));
        assert_eq!(parent(&i).sampled, None);
        // 64-bit trace ids, debug, parent span id.
        let i = extract(&req(&[(
            "b3",
            &format!("a3ce929d0e0e4736-{SPAN}-d-{SPAN}"),
        )]));
        assert_eq!(parent(&i).trace_id, TraceId::from(0xa3ce929d0e0e4736u128));
        assert_eq!(parent(&i).sampled, Some(true));
        let i = extract(&req(&[
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-Flags", "1"),
        ]));
        assert_eq!(parent(&i).sampled, Some(true));
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
            assert_eq!(i.parent, None, "{bad:?}");
            assert_eq!(i.b3, Some(B3::Single), "still answered in B3");
        }
    }

    #[test]
    fn names_are_found_whatever_their_case_and_absent_ones_cost_no_lookup() {
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let i = extract(&req(&[
            ("Host", "a"),
            ("TraceParent", &tp),
            ("TraceState", "a=1"),
            ("X-B3-TraceId", TRACE),
        ]));
        assert_eq!(parent(&i).trace_id, trace());
        assert!(i.tracestate && i.tracestate_sent && !i.drops_tracestate());
        assert_eq!(i.b3, Some(B3::Multi));
        let i = extract(&req(&[("Host", "a"), ("User-Agent", "wrk")]));
        assert_eq!(i.parent, None);
        assert_eq!(i.b3, None);
        assert!(!i.tracestate_sent && !i.drops_tracestate());
        // A tracestate without a usable parent does not go on.
        let i = extract(&req(&[("traceparent", "garbage"), ("tracestate", "a=1")]));
        assert_eq!(i.parent, None);
        assert!(i.drops_tracestate());
    }

    #[test]
    fn traceparent_wins_over_b3() {
        let other = "11111111111111111111111111111111";
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let i = extract(&req(&[
            ("traceparent", &tp),
            ("b3", &format!("{other}-{SPAN}-1")),
        ]));
        assert_eq!(parent(&i).trace_id, trace());
        assert_eq!(i.b3, Some(B3::Single), "B3 is still sent on");
    }

    #[test]
    fn inject_replaces_stale_headers() {
        let own = Outgoing {
            trace_id: trace(),
            span_id: SpanId::from_hex("1111111111111111").unwrap(),
            sampled: true,
        };
        let mut r = req(&[
            ("traceparent", "garbage"),
            ("tracestate", "stale=1"),
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-ParentSpanId", "2222222222222222"),
            ("X-B3-Sampled", "1"),
        ]);
        inject(&own, true, Some(B3::Multi), &mut r);
        let h =
            |r: &RequestHeader, k: &str| r.headers.get(k).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            h(&r, "traceparent").unwrap(),
            format!("00-{TRACE}-1111111111111111-01")
        );
        assert_eq!(h(&r, "tracestate"), None);
        assert_eq!(h(&r, "x-b3-traceid").as_deref(), Some(TRACE));
        assert_eq!(h(&r, "x-b3-spanid").as_deref(), Some("1111111111111111"));
        assert_eq!(h(&r, "x-b3-parentspanid"), None);
        assert_eq!(h(&r, "x-b3-sampled").as_deref(), Some("1"));
        assert_eq!(r.headers.get_all("traceparent").iter().count(), 1);
        let mut r = req(&[("b3", "whatever")]);
        inject(&own, false, Some(B3::Single), &mut r);
        assert_eq!(h(&r, "b3").unwrap(), format!("{TRACE}-1111111111111111-1"));
        // Not sampled: flags 00 and B3 sampling 0; a valid tracestate kept as it came.
        let own = Outgoing {
            sampled: false,
            ..own
        };
        let mut r = req(&[("tracestate", "a=1"), ("tracestate", "b=2")]);
        inject(&own, false, None, &mut r);
        assert_eq!(
            h(&r, "traceparent").unwrap(),
            format!("00-{TRACE}-1111111111111111-00")
        );
        let states: Vec<_> = r.headers.get_all("tracestate").iter().collect();
        assert_eq!(states, ["a=1", "b=2"]);
        let mut r = req(&[]);
        inject(&own, false, Some(B3::Single), &mut r);
        assert_eq!(h(&r, "b3").unwrap(), format!("{TRACE}-1111111111111111-0"));
    }

    /// The request as Pingora writes it to an HTTP/1 upstream.
    fn wire(r: &RequestHeader) -> String {
        let mut buf = Vec::new();
        r.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn the_rebuilt_request_keeps_everything_but_the_case_of_names() {
        let own = Outgoing {
            trace_id: trace(),
            span_id: SpanId::from_hex(SPAN).unwrap(),
            sampled: false,
        };
        let tp = format!("00-{TRACE}-{SPAN}-00");
        // As Pingora parses it: maps sized to the headers, names as the client wrote them.
        let mut r = RequestHeader::build("POST", b"/a%2Fb?q=1&r", Some(4)).unwrap();
        for (k, v) in [
            ("HOST", "web"),
            ("X-Multi", "1"),
            ("Content-Length", "0"),
            ("x-multi", "2"),
        ] {
            r.append_header(k.to_string(), v).unwrap();
        }
        r.extensions_mut().insert(7u32);
        inject(&own, false, None, &mut r);
        assert_eq!(r.method, http::Method::POST);
        assert_eq!(r.raw_path(), b"/a%2Fb?q=1&r");
        assert_eq!(r.uri.path(), "/a%2Fb");
        assert_eq!(r.version, http::Version::HTTP_11);
        assert_eq!(r.extensions.get::<u32>(), Some(&7));
        let multi: Vec<_> = r.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["1", "2"], "every value, in order");
        assert_eq!(
            wire(&r),
            format!(
                "Host: web\r\nx-multi: 1\r\nx-multi: 2\r\nContent-Length: 0\r\ntraceparent: {tp}\r\n"
            ),
            "names in lower case but for a few common ones, the trace header last"
        );
        // Room was made for the trace headers: writing them grew nothing.
        let sized = HeaderMap::<HeaderValue>::with_capacity(3 + TRACE_HEADERS_MAX);
        assert_eq!(r.headers.capacity(), sized.capacity());

        // Targets kept apart from the URI come back as they were.
        for target in [&b"http://web.example/x?y"[..], b"/caf\xc3\xa9/\xff"] {
            let mut r = RequestHeader::build("GET", target, Some(1)).unwrap();
            r.append_header("Host", "web").unwrap();
            let before = (r.uri.clone(), r.raw_path().to_vec(), r.raw_path_is_utf8());
            inject(&own, false, None, &mut r);
            assert_eq!(
                (r.uri.clone(), r.raw_path().to_vec(), r.raw_path_is_utf8()),
                before
            );
        }
        // HTTP/2: whether the headers end the stream is kept.
        let mut r = RequestHeader::build_no_case("GET", b"/", None).unwrap();
        r.set_version(http::Version::HTTP_2);
        r.set_send_end_stream(false);
        inject(&own, false, None, &mut r);
        assert_eq!(r.send_end_stream(), Some(false));
    }

    #[test]
    fn in_place_writes_what_the_rebuild_writes() {
        let own = Outgoing {
            trace_id: trace(),
            span_id: SpanId::from_hex("1111111111111111").unwrap(),
            sampled: true,
        };
        let sent = [
            ("Host", "web"),
            ("traceparent", "garbage"),
            ("tracestate", "stale=1"),
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-ParentSpanId", "2222222222222222"),
            ("X-B3-Flags", "1"),
            ("b3", "x"),
        ];
        for (drop_tracestate, b3) in [
            (true, Some(B3::Multi)),
            (false, Some(B3::Single)),
            (false, None),
        ] {
            let mut rebuilt = req(&sent);
            inject(&own, drop_tracestate, b3, &mut rebuilt);
            let mut in_place = req(&sent);
            inject_in_place(&own, drop_tracestate, b3, &mut in_place);
            let all = |r: &RequestHeader| {
                let mut v: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                    .collect();
                v.sort();
                v
            };
            assert_eq!(all(&rebuilt), all(&in_place), "{drop_tracestate} {b3:?}");
            assert_eq!(rebuilt.headers.get_all("traceparent").iter().count(), 1);
        }
    }

    #[test]
    fn hex_of_ids() {
        assert_eq!(&hex32(trace()), TRACE.as_bytes());
        assert_eq!(&hex16(SpanId::from_hex(SPAN).unwrap()), SPAN.as_bytes());
        assert_eq!(&hex16(SpanId::from(u64::MAX)), b"ffffffffffffffff");
        // Every byte value, against the standard formatting.
        for start in (0..=255u8).step_by(16) {
            let bytes: [u8; 16] = std::array::from_fn(|i| start + i as u8);
            let ours: [u8; 32] = hex(bytes);
            let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(std::str::from_utf8(&ours).unwrap(), expected);
        }
    }
}
