//! OpenTelemetry tracing: a span per proxied HTTP request (W3C or B3 parent continued, the
//! proxy's span sent upstream as parent) and per TCP connection, exported over OTLP off the
//! request path. Off (nothing done per request) unless a collector endpoint is configured.
//!
//! The sampling decision is taken first, with no allocation ([`sampling`]); an unsampled
//! request only gets a new span id and its `traceparent` (flags `00`) written upstream from a
//! stack buffer, and builds no OpenTelemetry object at all: tracing at 1 % must cost next to
//! nothing on the 99 % (issue 17). A sampled one keeps the values its span is made of, and the
//! export thread makes the span ([`HttpRecord`]).
//!
//! Settings: [`settings`]; headers: [`headers`]; sampling and ids: [`sampling`]; export queue
//! and its metrics: [`export`].

pub mod export;
pub mod headers;
pub mod sampling;
pub mod settings;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span, SpanData};
use opentelemetry_sdk::Resource;
use pingora_error::{Error as PError, ErrorType};
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use crate::config::{Config, OtlpProtocol};
use crate::http::RequestCtx;
use crate::refusal::Refusal;
use headers::{Outgoing, B3};
use sampling::Sampling;
pub use settings::TraceSettings;

/// Longest request value (path, host, user agent) copied into a span attribute.
pub const ATTRIBUTE_MAX: usize = 256;

/// The instrumentation scope of the proxy's spans.
pub const TRACER_NAME: &str = "maille-proxy";

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or `OTEL_*` variable is unusable.
    #[error(transparent)]
    Settings(#[from] settings::Error),
    /// The exporter could not be built.
    #[error("OTLP exporter for {endpoint}: {reason}")]
    Exporter {
        /// Where spans would go.
        endpoint: String,
        /// What failed.
        reason: String,
    },
}

/// `pub type Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The proxy's tracing: cheap to clone, and a no-op when off.
#[derive(Clone, Default)]
pub struct Tracing {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    /// Where HTTP spans are queued (the SDK makes only the TCP ones).
    sender: export::Sender,
    /// Which requests are sampled (only those are recorded).
    sampling: Sampling,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.inner.is_some() {
            "Tracing(on)"
        } else {
            "Tracing(off)"
        })
    }
}

impl Tracing {
    /// Tracing that does nothing.
    pub fn off() -> Tracing {
        Tracing::default()
    }

    /// The tracing of `config` and the process environment (`OTEL_*`); off when no endpoint
    /// is set. Unusable `OTEL_*` values (other than endpoints) are logged and replaced by
    /// their defaults.
    pub fn from_config(config: &Config) -> Result<Tracing> {
        let mut warnings = Vec::new();
        let resolved = settings::resolve(config, &|k| std::env::var(k).ok(), &mut warnings);
        for w in &warnings {
            tracing::warn!(setting = %w, "Unusable tracing setting; using the default");
        }
        match resolved? {
            Some(s) => Tracing::start(&s),
            None => Ok(Tracing::off()),
        }
    }

    /// Tracing to the collector of `s`, with its export thread running.
    pub fn start(s: &TraceSettings) -> Result<Tracing> {
        let resource = resource();
        let endpoint = s.endpoint.clone();
        let protocol = s.protocol;
        let batching = export::Batching {
            queue_size: s.queue_size,
            batch_size: s.batch_size,
            delay: s.batch_delay,
            timeout: s.export_timeout,
        };
        let processor = export::QueueProcessor::start(batching, resource.clone(), move || {
            let built = match protocol {
                OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(endpoint)
                    .build(),
                OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .build(),
            };
            built.map_err(|e| e.to_string())
        })
        .map_err(|reason| Error::Exporter {
            endpoint: s.endpoint.clone(),
            reason,
        })?;
        let sender = processor.sender();
        // The decision is taken before a span is started (`Sampling`): the SDK records every
        // span it is given, with the trace id the decision was taken on.
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::AlwaysOn)
            .with_id_generator(sampling::Ids)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer(TRACER_NAME);
        tracing::info!(endpoint = %s.endpoint, protocol = ?s.protocol, sampler = ?s.sampler, "Tracing on");
        Ok(Tracing {
            inner: Some(Arc::new(Inner {
                tracer,
                provider,
                sender,
                sampling: Sampling::new(s.sampler),
            })),
        })
    }

    /// Whether spans are made at all.
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Sends the spans finished so far (waits at most a few seconds).
    pub fn flush(&self) {
        if let Some(i) = &self.inner {
            if let Err(e) = i.provider.force_flush() {
                tracing::debug!(error = %e, "Span flush");
            }
        }
    }

    /// Exports the spans still queued and stops the export (waits at most 5 s).
    pub fn shutdown(&self) {
        if let Some(i) = &self.inner {
            if let Err(e) = i.provider.shutdown() {
                tracing::debug!(error = %e, "Span export shutdown");
            }
        }
    }

    /// Starts the span of an HTTP request, continuing the trace its headers carry. Sampling is
    /// decided here; an unsampled request allocates nothing, a sampled one only its record.
    pub fn start_http(&self, session: &Session) -> Option<HttpSpan> {
        let inner = self.inner.as_ref()?;
        let req = session.req_header();
        let incoming = headers::extract(req);
        let parent = incoming.parent.as_ref();
        let trace_id = parent.map_or_else(sampling::new_trace_id, |p| p.trace_id);
        if !inner.sampling.sampled(trace_id, parent) {
            return Some(HttpSpan {
                own: Outgoing {
                    trace_id,
                    span_id: sampling::new_span_id(),
                    sampled: false,
                },
                drop_tracestate: incoming.drops_tracestate(),
                b3: incoming.b3,
                sampled: None,
            });
        }
        // Sampled: only the values the span is made of are kept here; the export thread makes
        // the OpenTelemetry span of them ([`export`]). The SDK would record what it is given,
        // with the flags of the parent and `sampled` set, as this does.
        let trace_state = match parent {
            Some(_) => headers::trace_state(req, &incoming),
            None => TraceState::default(),
        };
        let own = Outgoing {
            trace_id,
            span_id: sampling::new_span_id(),
            sampled: true,
        };
        Some(HttpSpan {
            own,
            drop_tracestate: incoming.drops_tracestate(),
            b3: incoming.b3,
            sampled: Some(Box::new(Sampled {
                start: opentelemetry::time::now(),
                parent: parent.map(|p| p.span_id),
                trace_state,
                sender: inner.sender.clone(),
            })),
        })
    }

    /// Starts the span of a TCP connection (a new trace: TCP carries no trace context); no
    /// SDK span when it is not sampled.
    pub fn start_tcp(&self, mesh_port: u16, client: Option<SocketAddr>) -> TcpSpan {
        let Some(inner) = self.inner.as_ref() else {
            return TcpSpan(None);
        };
        let trace_id = sampling::new_trace_id();
        if !inner.sampling.sampled(trace_id, None) {
            return TcpSpan(None);
        }
        let mut span = sampling::with_trace_id(trace_id, || {
            inner
                .tracer
                .span_builder("tcp")
                .with_kind(SpanKind::Server)
                .start(&inner.tracer)
        });
        span.set_attribute(KeyValue::new("network.transport", "tcp"));
        span.set_attribute(KeyValue::new("server.port", i64::from(mesh_port)));
        if let Some(c) = client {
            span.set_attribute(KeyValue::new("client.address", c.ip().to_string()));
            span.set_attribute(KeyValue::new("client.port", i64::from(c.port())));
        }
        TcpSpan(Some(span))
    }
}

/// `service.name` from `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES`, else `maille-proxy`.
fn resource() -> Resource {
    let r = Resource::builder().build();
    let named = r
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    if named {
        r
    } else {
        Resource::builder()
            .with_service_name("maille-proxy")
            .build()
    }
}

/// The span of one HTTP request: its ids, and what its span is made of when sampled.
#[derive(Debug)]
pub struct HttpSpan {
    /// What the upstream request names as its parent.
    own: Outgoing,
    /// Whether the client's `tracestate` is removed from the upstream request.
    drop_tracestate: bool,
    b3: Option<B3>,
    /// Only for a sampled request; boxed so that the 99 % of requests that are not sampled
    /// carry (and move) one word for it.
    sampled: Option<Box<Sampled>>,
}

/// What a sampled request's span keeps from its start.
#[derive(Debug)]
struct Sampled {
    start: SystemTime,
    /// The client's span, when the trace came with the request.
    parent: Option<SpanId>,
    trace_state: TraceState,
    sender: export::Sender,
}

impl HttpSpan {
    /// Makes this span the parent of the upstream request (every attempt).
    pub fn inject(&self, upstream: &mut RequestHeader) {
        headers::inject(&self.own, self.drop_tracestate, self.b3, upstream);
    }

    /// The trace and span id the upstream request names, and whether the span is sampled.
    pub fn ids(&self) -> Outgoing {
        self.own
    }

    /// Ends the span with the request's outcome and queues it for export. Nothing to do for
    /// an unsampled one. Only the values are taken here (copies of a few strings); the
    /// attributes are made on the export thread ([`HttpRecord::into_span_data`]).
    pub fn finish(self, session: &Session, e: Option<&PError>, ctx: &RequestCtx) {
        let Some(sampled) = self.sampled else {
            return;
        };
        let Sampled {
            start,
            parent,
            trace_state,
            sender,
        } = *sampled;
        let status = crate::http::final_status(session, e, ctx);
        let req = session.req_header();
        let version = match req.version {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        };
        let service = ctx.service().map(|s| s.key.clone());
        let backend = match (ctx.backend, ctx.service) {
            (Some(b), Some(s)) if b != s => ctx.backend().map(|b| b.key.clone()),
            _ => None,
        };
        let error = (status >= 500).then(|| e.map(|e| cut(&e.to_string())).unwrap_or_default());
        sender.send(HttpRecord {
            trace_id: self.own.trace_id,
            span_id: self.own.span_id,
            parent,
            trace_state,
            start,
            end: opentelemetry::time::now(),
            method: req.method.clone(),
            path: cut(req.uri.path()),
            host: crate::http::route::request_host(session).map(cut),
            mesh_port: ctx.mesh_port,
            client: session.client_addr().and_then(|a| a.as_inet()).copied(),
            version,
            user_agent: req
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(cut),
            service,
            backend,
            endpoint: ctx.endpoint(),
            route: ctx
                .route_entry()
                .map(|(route, _)| (route.route.clone(), route.rule)),
            retries: ctx.resilience.attempts().checked_sub(1),
            local_reason: local_reason(ctx, e, status),
            status,
            error,
        });
    }
}

/// A sampled HTTP request's span as the values it is made of, queued for export.
#[derive(Debug)]
pub struct HttpRecord {
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    trace_state: TraceState,
    start: SystemTime,
    end: SystemTime,
    method: http::Method,
    path: String,
    host: Option<String>,
    mesh_port: u16,
    client: Option<SocketAddr>,
    version: &'static str,
    user_agent: Option<String>,
    service: Option<config_model::ServiceKey>,
    backend: Option<config_model::ServiceKey>,
    endpoint: Option<SocketAddr>,
    route: Option<(String, u32)>,
    retries: Option<u32>,
    local_reason: Option<&'static str>,
    status: u16,
    /// The error's text, for a status of 500 or more.
    error: Option<String>,
}

impl HttpRecord {
    /// The OpenTelemetry span: kind server, named `<method> <service>` (the method alone when
    /// no service was routed to), with the attributes of the HTTP semantic conventions and
    /// Maille's own.
    pub fn into_span_data(self, scope: &InstrumentationScope) -> SpanData {
        let method = self.method.as_str();
        let mut attrs = Vec::with_capacity(18);
        attrs.push(KeyValue::new("http.request.method", method.to_string()));
        attrs.push(KeyValue::new("url.path", self.path));
        attrs.push(KeyValue::new("url.scheme", "http"));
        attrs.push(KeyValue::new(
            "http.response.status_code",
            i64::from(self.status),
        ));
        if let Some(host) = self.host {
            attrs.push(KeyValue::new("server.address", host));
        }
        attrs.push(KeyValue::new("server.port", i64::from(self.mesh_port)));
        if let Some(c) = self.client {
            attrs.push(KeyValue::new("client.address", c.ip().to_string()));
            attrs.push(KeyValue::new("client.port", i64::from(c.port())));
        }
        attrs.push(KeyValue::new("network.protocol.version", self.version));
        if let Some(ua) = self.user_agent {
            attrs.push(KeyValue::new("user_agent.original", ua));
        }
        let name = match &self.service {
            Some(s) => {
                attrs.push(KeyValue::new("maille.service", s.to_string()));
                Cow::Owned(format!("{method} {s}"))
            }
            None => method_name(&self.method),
        };
        if let Some(b) = self.backend {
            attrs.push(KeyValue::new("maille.backend", b.to_string()));
        }
        if let Some(ep) = self.endpoint {
            attrs.push(KeyValue::new("maille.endpoint", ep.to_string()));
        }
        if let Some((route, rule)) = self.route {
            attrs.push(KeyValue::new("maille.route", route));
            attrs.push(KeyValue::new("maille.route.rule", i64::from(rule)));
        }
        if let Some(retries) = self.retries {
            attrs.push(KeyValue::new("maille.retries", i64::from(retries)));
        }
        if let Some(reason) = self.local_reason {
            attrs.push(KeyValue::new("maille.local_reason", reason));
        }
        let status = match self.error {
            Some(message) => {
                attrs.push(KeyValue::new("error.type", self.status.to_string()));
                Status::error(message)
            }
            None => Status::Unset,
        };
        SpanData {
            span_context: SpanContext::new(
                self.trace_id,
                self.span_id,
                TraceFlags::SAMPLED,
                false,
                self.trace_state,
            ),
            parent_span_id: self.parent.unwrap_or(SpanId::INVALID),
            parent_span_is_remote: self.parent.is_some(),
            span_kind: SpanKind::Server,
            name,
            start_time: self.start,
            end_time: self.end,
            attributes: attrs,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status,
            instrumentation_scope: scope.clone(),
        }
    }
}

/// Why the proxy answered a request itself, when it did: the status says which rule, the
/// routing state which of the rules that share a status.
pub fn local_reason(ctx: &RequestCtx, e: Option<&PError>, status: u16) -> Option<&'static str> {
    if let Some(s) = ctx.local_status {
        return Some(match s {
            400 => "bad_request",
            404 => Refusal::NoRoute.reason(),
            500 => Refusal::BackendNotFound.reason(),
            301..=308 => "redirect",
            403 => Refusal::AccessDenied.reason(),
            429 => "rate_limited",
            // Before the first table nothing routes.
            503 if ctx.service.is_none() => "no_table",
            // A split with only zero weights refuses before a backend is chosen.
            503 if ctx.backend.is_none() => Refusal::NoTraffic.reason(),
            503 if ctx.backend().is_some_and(|b| b.endpoints.is_empty()) => {
                Refusal::NoEndpoint.reason()
            }
            503 => "circuit_open",
            _ => "local_answer",
        });
    }
    let e = e?;
    Some(match (e.etype(), status) {
        (_, 504) => "timeout",
        (ErrorType::HTTPStatus(503), _) => Refusal::NoEndpoint.reason(),
        (_, 502) => "upstream_failed",
        _ => return None,
    })
}

/// The span of one TCP connection; ends when dropped. All methods are no-ops when tracing is
/// off or the span is not sampled.
#[derive(Debug)]
pub struct TcpSpan(Option<Span>);

impl TcpSpan {
    fn recording(&mut self) -> Option<&mut Span> {
        self.0.as_mut()
    }

    /// The service port the connection was routed to.
    pub fn routed(&mut self, service: &config_model::ServiceKey) {
        if let Some(s) = self.recording() {
            s.update_name(format!("tcp {service}"));
            s.set_attribute(KeyValue::new("maille.service", service.to_string()));
        }
    }

    /// The endpoint the connection is relayed to.
    pub fn endpoint(&mut self, addr: SocketAddr) {
        if let Some(s) = self.recording() {
            s.set_attribute(KeyValue::new("maille.endpoint", addr.to_string()));
        }
    }

    /// How the connection ended (`finished`, `idle`, ...) or why it was refused
    /// ([`Refusal::reason`], or `no_endpoint_reachable`); refusals and
    /// errors mark the span as failed.
    pub fn ended(&mut self, reason: &'static str, failed: bool) {
        if let Some(s) = self.recording() {
            s.set_attribute(KeyValue::new("maille.end_reason", reason));
            if failed {
                s.set_status(Status::error(reason));
            }
        }
    }
}

/// The span name of a request before it is routed: the method, without an allocation for the
/// common ones (most spans are not sampled, and their name is never read).
fn method_name(m: &http::Method) -> Cow<'static, str> {
    const KNOWN: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"];
    match KNOWN.iter().find(|k| **k == m.as_str()) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(cut(m.as_str())),
    }
}

/// `value` cut to [`ATTRIBUTE_MAX`] bytes (at a character boundary).
fn cut(value: &str) -> String {
    if value.len() <= ATTRIBUTE_MAX {
        return value.to_string();
    }
    let mut end = ATTRIBUTE_MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_string()
}
