//! The HTTP data plane: a Pingora `ProxyHttp` that routes each request by listener port and
//! Host through the current table, and the listening service that carries it.
//!
//! Hook bodies stay small and delegate: routing steps live in [`route`], endpoint choice in
//! [`crate::balance`], bookkeeping in [`log_request`]. Per-request state is [`RequestCtx`].

pub mod conn;
pub mod filters;
pub mod path;
pub mod request;
pub mod route;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use config_model::ServiceId;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, HttpProxy, ProxyHttp, Session};

use crate::balance::{Balancer, Pick};
use crate::compiled::CompiledTable;
use crate::metrics;
use crate::refusal::Refused;
use crate::resilience::{Rejection, RequestState};
use crate::store::TableStore;
use crate::upstream::{self, UpstreamTls};
use conn::{ClientStream, ConnLimits};

/// Per-request state shared by the hooks of [`MeshProxy`].
#[derive(Debug)]
pub struct RequestCtx {
    /// When the request header was read.
    pub start: Instant,
    /// Listener port the request arrived on.
    pub mesh_port: u16,
    /// The table this request routes with (the same one for every attempt).
    pub table: Option<Arc<CompiledTable>>,
    /// The service port the Host matched (metrics labels).
    pub service: Option<ServiceId>,
    /// The service port whose endpoints serve the request (differs from `service` when a
    /// traffic split sent it elsewhere).
    pub backend: Option<ServiceId>,
    /// The Gateway API route entry of `service` that matched, by position.
    pub route: Option<usize>,
    /// The endpoint of the current attempt; counted in flight while held.
    pub pick: Option<Pick>,
    /// Endpoints that failed during this request, avoided by later attempts.
    pub failed: Vec<SocketAddr>,
    /// Status the proxy answered itself (404, 503, ...), if it did.
    pub local_status: Option<u16>,
    /// Rate limit, breaker, retry and deadline bookkeeping of this request, and its count of
    /// upstream attempts.
    pub resilience: RequestState,
    /// The request's span, when tracing is on ([`crate::trace`]).
    pub trace: Option<crate::trace::HttpSpan>,
    /// The current attempt's hold on its tunnel stream (plain HTTP/1 across nodes).
    pub tunnel: Option<crate::tunnel::lease::Ticket>,
}

impl RequestCtx {
    /// The service port the request was routed to, if any.
    pub fn service(&self) -> Option<&config_model::Service> {
        Some(&self.table.as_ref()?[self.service?])
    }

    /// The service port whose endpoints serve the request, if any.
    pub fn backend(&self) -> Option<&config_model::Service> {
        Some(&self.table.as_ref()?[self.backend?])
    }

    /// The route entry that matched and its runtime, if one did.
    pub fn route_entry(
        &self,
    ) -> Option<(&config_model::Route, &crate::compiled::routes::RouteRuntime)> {
        let (table, service, i) = (self.table.as_ref()?, self.service?, self.route?);
        Some((&table[service].routes[i], &table.runtime(service).routes[i]))
    }

    /// The endpoint of the current attempt.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.pick.as_ref().map(|p| p.addr)
    }
}

/// The mesh's `ProxyHttp`: one per proxy, shared by every HTTP listener.
pub struct MeshProxy {
    store: Arc<TableStore>,
    balancer: Arc<Balancer>,
    access_log: bool,
    upstream_tls: UpstreamTls,
    tracing: crate::trace::Tracing,
    tunnel: Option<Arc<crate::tunnel::client::Pool>>,
}

impl MeshProxy {
    /// A proxy routing through `store`, picking endpoints with `balancer`.
    pub fn new(store: Arc<TableStore>, balancer: Arc<Balancer>, access_log: bool) -> Self {
        MeshProxy {
            store,
            balancer,
            access_log,
            upstream_tls: UpstreamTls::default(),
            tracing: crate::trace::Tracing::off(),
            tunnel: None,
        }
    }

    /// Reaches endpoints on other nodes through `pool`'s tunnel sessions.
    pub fn with_tunnel(mut self, pool: Option<Arc<crate::tunnel::client::Pool>>) -> Self {
        self.tunnel = pool;
        self
    }

    /// Traces requests with `tracing` (off by default).
    pub fn with_tracing(mut self, tracing: crate::trace::Tracing) -> Self {
        self.tracing = tracing;
        self
    }

    /// Verifies `https` upstreams with these CAs (the system's by default).
    pub fn with_upstream_tls(mut self, tls: UpstreamTls) -> Self {
        self.upstream_tls = tls;
        self
    }

    /// Answers the request locally with a short plain-text body.
    async fn answer(session: &mut Session, ctx: &mut RequestCtx, status: u16, body: String) {
        Self::answer_with(session, ctx, status, body, None).await
    }

    /// Answers a request the proxy refuses (no route, access denied, no traffic, no
    /// endpoint), logging it as TCP and UDP refusals are.
    async fn refuse(session: &mut Session, ctx: &mut RequestCtx, refused: Refused) {
        let client = session.client_addr().and_then(|a| a.as_inet()).copied();
        refused.log("http", client);
        Self::answer(session, ctx, refused.refusal.http_status(), refused.body()).await
    }

    /// Same, with one extra header (e.g. `Retry-After`).
    async fn answer_with(
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: u16,
        body: String,
        header: Option<(http::HeaderName, String)>,
    ) {
        ctx.local_status = Some(status);
        if let Err(e) = write_plain(session, status, body, header).await {
            tracing::debug!(error = %e, status, "Could not write local answer");
        }
    }
}

async fn write_plain(
    session: &mut Session,
    status: u16,
    body: String,
    header: Option<(http::HeaderName, String)>,
) -> Result<()> {
    let body = Bytes::from(body);
    let mut resp = ResponseHeader::build(status, Some(4))?;
    if let Some((name, value)) = header {
        resp.insert_header(name, value)?;
    }
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::SERVER, "maille-proxy")?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

#[async_trait]
impl ProxyHttp for MeshProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            mesh_port: 0,
            table: None,
            service: None,
            backend: None,
            route: None,
            pick: None,
            failed: Vec::new(),
            local_status: None,
            resilience: RequestState::default(),
            trace: None,
            tunnel: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The header is in: no header deadline while the request is served.
        if let Some(stream) = conn::client_stream(session) {
            stream.request_started();
        }
        // Serve pipelined HTTP/1.1 requests in order (RFC 9112 section 9.3.2) instead of
        // dropping the ones read along with the first.
        session.as_mut().set_pipelining_enabled(true);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.trace = self.tracing.start_http(session);
        ctx.mesh_port = route::listener_port(session);
        // Before anything looks at Host or path: matches, rules and the upstream all see the
        // normalised request, or none does.
        if let Err(bad) = request::check_and_normalise(session.req_header_mut()) {
            // The body's framing may be what is wrong: do not read another request after it.
            session.set_keepalive(None);
            Self::answer(session, ctx, 400, bad.body()).await;
            return Ok(true);
        }
        let table = self.store.current();
        let host = route::request_host(session).unwrap_or("");
        let Some(service) = route::lookup(&table, ctx.mesh_port, host) else {
            if !self.store.is_ready() {
                // Not "no such route": the proxy cannot know yet.
                ctx.table = Some(table);
                let body = "maille: no routing table yet (the proxy is starting); retry shortly\n";
                Self::answer(session, ctx, 503, body.to_string()).await;
                return Ok(true);
            }
            let refused =
                Refused::no_route(format_args!("host {host:?} on port {}", ctx.mesh_port));
            ctx.table = Some(table);
            Self::refuse(session, ctx, refused).await;
            return Ok(true);
        };
        ctx.service = Some(service);
        let backend = match routes::resolve(&table, service, session, &mut ctx.route) {
            routes::Routed::To(b) => b,
            routes::Routed::Redirect { status, location } => {
                ctx.table = Some(table);
                let header = Some((http::header::LOCATION, location));
                Self::answer_with(session, ctx, status, String::new(), header).await;
                return Ok(true);
            }
            routes::Routed::Refused(refused) => {
                ctx.table = Some(table);
                Self::refuse(session, ctx, refused).await;
                return Ok(true);
            }
        };
        // The access rules of the service port whose pods are reached (the split's pick).
        if let Err(refused) = route::check_access(&table, backend, session) {
            ctx.table = Some(table);
            Self::refuse(session, ctx, refused).await;
            return Ok(true);
        }
        ctx.backend = Some(backend);
        let svc = &table[backend];
        if svc.endpoints.is_empty() {
            let refused = Refused::no_endpoint(&svc.key);
            ctx.table = Some(table);
            Self::refuse(session, ctx, refused).await;
            return Ok(true);
        }
        let policy = ctx
            .route
            .and_then(|i| table.runtime(service).routes[i].policy.clone());
        ctx.resilience =
            RequestState::start_routed(table.runtime(backend).resilience.clone(), policy);
        if let Err(rejection) = ctx.resilience.admit() {
            let key = svc.key.to_string();
            ctx.table = Some(table);
            Self::reject(session, ctx, rejection, &key).await;
            return Ok(true);
        }
        ctx.table = Some(table);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let (Some(table), Some(backend)) = (ctx.table.as_ref(), ctx.backend) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "upstream_peer called without a route",
            ));
        };
        // Release the previous attempt's in-flight count before taking a new one.
        ctx.pick = None;
        if let Some(pause) = ctx.resilience.backoff() {
            tokio::time::sleep(pause).await;
        }
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let upstream::MeshPeer {
            pick,
            mut peer,
            ticket,
        } = upstream::mesh_peer(
            &self.balancer,
            table,
            backend,
            &ctx.failed,
            client,
            &self.upstream_tls,
            self.tunnel.as_ref(),
        )?;
        // An earlier attempt's stream is closed, never kept.
        ctx.tunnel = ticket;
        ctx.resilience.start_attempt(&mut peer)?;
        ctx.pick = Some(pick);
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if crate::tunnel::connector::is_denial(&e) {
            // The endpoint's proxy refused the client's claim: not the endpoint's fault, and
            // every endpoint would say the same.
            e.set_retry(false);
            return e;
        }
        if let Some(pick) = &ctx.pick {
            pick.observe_failure();
            ctx.failed.push(pick.addr);
        }
        let endpoints = match (&ctx.table, ctx.backend) {
            (Some(t), Some(b)) => t[b].endpoints.len(),
            _ => 0,
        };
        ctx.resilience.on_connect_failure(&mut e, endpoints);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // A tunnel stream kept from an earlier request is a pooled connection too.
        let client_reused = client_reused || ctx.tunnel.as_ref().is_some_and(|t| t.reused());
        // A stale pooled connection says nothing about the endpoint; anything else does. A
        // response of a route's retried code was an answer (not a failure for passive health),
        // but the retry goes elsewhere.
        let status_retry = ctx.resilience.is_status_retry();
        if !client_reused || status_retry {
            if let Some(pick) = &ctx.pick {
                if !status_retry {
                    pick.observe_failure();
                }
                ctx.failed.push(pick.addr);
            }
        }
        let truncated = session.as_ref().retry_buffer_truncated();
        let method = session.req_header().method.clone();
        ctx.resilience
            .on_error_while_proxy(&mut e, &method, truncated, client_reused);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match ctx.resilience.error_status(e) {
            Some(code) => code,
            None => default_error_status(e),
        };
        if code > 0 {
            if let Err(err) = session.respond_error(code).await {
                tracing::debug!(error = %err, status = code, "Could not write error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut pingora_http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(span) = &ctx.trace {
            span.inject(upstream_request);
        }
        if let Some((route, rt)) = ctx.route_entry() {
            filters::on_upstream_request(route, rt, upstream_request)?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(ticket) = &mut ctx.tunnel {
            ticket.on_response(upstream_response);
        }
        if let Some(pick) = &ctx.pick {
            pick.observe_response();
        }
        if ctx.route.is_some() {
            let status = upstream_response.status.as_u16();
            let truncated = session.as_ref().retry_buffer_truncated();
            if ctx.resilience.retry_status(status, truncated) {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    "retried status code of the route rule",
                ));
            }
            if let Some((_, rt)) = ctx.route_entry() {
                filters::on_response(rt, upstream_response)?;
            }
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if ctx.route.is_some() {
            ctx.resilience.check_body_deadline()?;
        }
        Ok(None)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        crate::tunnel::lease::settle(ctx.tunnel.take(), session, e);
        if let Some(span) = ctx.trace.take() {
            span.finish(session, e, ctx);
        }
        if let Some(stream) = conn::client_stream(session) {
            stream.request_finished();
        }
        let status = final_status(session, e, ctx);
        ctx.resilience.finish(status, e);
        log_request(session, e, ctx, self.access_log);
        // The pick ends the endpoint's in-flight count; after the log line, which names it.
        ctx.pick = None;
    }
}

impl MeshProxy {
    /// Answers a request refused by the rate limit (429) or an open circuit breaker (503).
    async fn reject(session: &mut Session, ctx: &mut RequestCtx, rejection: Rejection, key: &str) {
        match rejection {
            Rejection::RateLimited { retry_after_secs } => {
                let body = format!("maille: rate limit of service {key} exceeded\n");
                let header = (http::header::RETRY_AFTER, retry_after_secs.to_string());
                Self::answer_with(session, ctx, 429, body, Some(header)).await;
            }
            Rejection::CircuitOpen => {
                let body = format!("maille: circuit breaker of service {key} is open\n");
                Self::answer(session, ctx, rejection.status(), body).await;
            }
        }
    }
}

/// Pingora's own mapping of a proxy error to the status the client gets: the status the
/// error carries, 502 for an upstream failure, 400 for a bad request, 0 (nothing to send) when
/// the client is gone, 500 otherwise.
fn default_error_status(e: &Error) -> u16 {
    match (e.etype(), e.esource()) {
        (ErrorType::HTTPStatus(code), _) => *code,
        (_, ErrorSource::Upstream) => 502,
        (
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ErrorSource::Downstream,
        ) => 0,
        (_, ErrorSource::Downstream) => 400,
        _ => 500,
    }
}

/// The status code a request ended with, for metrics and the access log: the response sent,
/// else 502 for an upstream failure, 499 when the client went away, 500 otherwise.
pub fn final_status(session: &Session, e: Option<&Error>, ctx: &RequestCtx) -> u16 {
    if let Some(resp) = session.response_written() {
        return resp.status.as_u16();
    }
    if let Some(s) = ctx.local_status {
        return s;
    }
    match e.map(|e| (e.etype(), e.esource())) {
        Some((ErrorType::HTTPStatus(code), _)) => *code,
        Some((_, ErrorSource::Upstream)) => 502,
        Some((_, ErrorSource::Downstream)) => 499,
        _ => 500,
    }
}

/// Counts the request in the metrics and writes its access-log line.
pub fn log_request(session: &Session, e: Option<&Error>, ctx: &RequestCtx, access_log: bool) {
    let status = final_status(session, e, ctx);
    let elapsed = ctx.start.elapsed();
    let mut port_buf = itoa::Buffer::new();
    let mut code_buf = itoa::Buffer::new();
    let code = code_buf.format(status);
    let [ns, name, port] = match (&ctx.table, ctx.service) {
        (Some(table), Some(id)) => table.runtime(id).labels(),
        _ => ["", "", port_buf.format(ctx.mesh_port)],
    };
    metrics::register()
        .http_requests
        .with_label_values(&[ns, name, port, code])
        .inc();
    if ctx.service.is_some() {
        metrics::register()
            .http_duration
            .with_label_values(&[ns, name, port])
            .observe(elapsed.as_secs_f64());
    }
    if access_log {
        let req = session.req_header();
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let (tunnel, client_identity) = match (&ctx.table, ctx.backend) {
            (Some(t), Some(b)) => upstream::mesh_log_fields(t, b, ctx.endpoint(), client),
            _ => Default::default(),
        };
        tracing::info!(
            target: "access",
            client = %session.client_addr().map(|a| a.to_string()).unwrap_or_default(),
            mesh_port = ctx.mesh_port,
            method = %req.method,
            host = route::request_host(session).unwrap_or(""),
            path = %req.uri.path(),
            status,
            namespace = ns,
            service = name,
            port,
            upstream = %ctx.endpoint().map(|a| a.to_string()).unwrap_or_default(),
            route = ctx.route_entry().map_or("", |(r, _)| r.route.as_str()),
            rule = ctx.route_entry().map(|(r, _)| r.rule),
            tunnel,
            client_identity,
            attempts = ctx.resilience.attempts(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            error = %e.map(|e| e.to_string()).unwrap_or_default(),
        );
    }
}

/// Wraps Pingora's HTTP proxy app to count open client connections, bound how many are open
/// at once, and apply the header and idle deadlines ([`conn::ClientStream`]).
pub struct CountingApp<A> {
    inner: Arc<A>,
    /// How long idle keep-alive connections stay open once the listeners have stopped.
    drain_idle: Duration,
    limits: ConnLimits,
    slots: Arc<tokio::sync::Semaphore>,
}

struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        metrics::register().http_connections_open.inc();
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::register().http_connections_open.dec();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for CountingApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            // Closed at once: nothing read, nothing buffered. The client sees a reset or EOF.
            metrics::register().http_connections_refused.inc();
            return None;
        };
        let _open = OpenConnection::new();
        let stream: Stream = Box::new(ClientStream::new(stream, self.limits));
        // Keep-alive loop here instead of in the listener, so that the connection is counted
        // from accept to close.
        let mut next = self.inner.process_new(stream, shutdown).await;
        while let Some(stream) = next {
            next = self.inner.process_new(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        // The listeners have stopped (SIGTERM, or an upgrade's new process took over). The
        // inner cleanup drops idle keep-alive connections at once, and a request a client sends
        // on one at that moment is lost. Wait first: meanwhile every request that arrives on
        // an open connection is still served, with `Connection: close` (HTTP/2 gets GOAWAY).
        if !self.drain_idle.is_zero() {
            tokio::time::sleep(self.drain_idle).await;
        }
        self.inner.cleanup().await
    }
}

/// The HTTP listening service: every address of `listen` (HTTP/1.1 and h2c on each).
pub fn service(
    conf: &Arc<pingora::server::configuration::ServerConf>,
    proxy: MeshProxy,
    listen: &[SocketAddr],
    threads: usize,
    limits: ConnLimits,
) -> Service<CountingApp<HttpProxy<MeshProxy>>> {
    let mut app = pingora_proxy::http_proxy(conf, proxy);
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    options.h2_idle_timeout = Some(limits.idle_timeout);
    app.server_options = Some(options);
    // Idle keep-alive connections are closed half-way through the grace period: a client that
    // sent nothing for that long is told by the close itself.
    let drain_idle = Duration::from_secs(conf.grace_period_seconds.unwrap_or(0)) / 2;
    let mut svc = Service::new(
        "maille HTTP".to_string(),
        CountingApp {
            inner: Arc::new(app),
            drain_idle,
            limits,
            slots: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
        },
    );
    for addr in listen {
        svc.add_tcp(&addr.to_string());
    }
    svc.threads = Some(threads);
    svc
}
