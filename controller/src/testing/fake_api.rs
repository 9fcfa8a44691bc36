//! An in-memory Kubernetes API server behind a real `kube::Client` (tower-test mock), answering
//! as the real one does: GET, lists (namespaced or across namespaces) with label selectors and
//! field selectors on the name and namespace, watches (a stream of events from a
//! resourceVersion, `410 Gone` once that version is compacted), POST, PUT with resourceVersion
//! checks, JSON merge PATCH (a resourceVersion in the patch is a precondition; on the `status`
//! subresource only `status` changes), server-side apply (approximated by a merge that creates
//! the object when missing), DELETE with preconditions, 404s, 409s, and resources that are not
//! installed (404) or forbidden (403). It records every write so tests can assert what
//! changed, and what did not.
//! In-process through `client()` (unit tests), or over loopback HTTP through `serve()` (tests
//! of the `maille-controller` binary; feature `testing`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use futures::Stream;
use http::{Method, StatusCode};
#[cfg(test)]
use http::{Request, Response};
#[cfg(test)]
use kube::client::Body;
#[cfg(test)]
use kube::Client;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

type Mutation = Box<dyn FnOnce(&mut Value) + Send>;

/// One change, as a watch reports it.
struct Change {
    rv: u64,
    collection: String,
    namespace: String,
    type_: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    /// Collection (`/api/v1/configmaps`) to (namespace, name) to object; cluster-scoped
    /// objects have an empty namespace.
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    resource_version: u64,
    writes: Vec<String>,
    /// A change someone else makes just before our next write of that object.
    races: BTreeMap<String, Mutation>,
    /// Every change so far, for watches.
    changes: Vec<Change>,
    /// Watches from a resourceVersion below this one are answered `410 Gone`.
    compacted: u64,
    /// Resources (plural names) this server does not serve: their CRD is not installed.
    absent: BTreeSet<String>,
    /// Resources whose every request is refused with 403.
    forbidden: BTreeSet<String>,
    /// Bumped to end every open watch (as an API server restart does).
    epoch: u64,
    /// Requests so far, as `METHOD path?query`, for tests that count lists and watches.
    requests: Vec<String>,
    /// Tokens a TokenReview authenticates: token to (audiences, `status.user`).
    tokens: BTreeMap<String, (Vec<String>, Value)>,
}

/// The fake API server. Clones share state.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    /// Bumped after every change, to wake open watches.
    changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for FakeApi {
    fn default() -> Self {
        FakeApi {
            state: Arc::default(),
            changed: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }
}

/// What a request addresses: `/api/v1/namespaces/shop/services/web` is the collection
/// `/api/v1/services`, namespace `shop`, name `web`.
#[derive(Debug, PartialEq)]
struct Target {
    collection: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    /// `status` for `/.../name/status`.
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (base, rest) = match segments.first() {
        Some(&"api") if segments.len() >= 3 => (format!("/api/{}", segments[1]), &segments[2..]),
        Some(&"apis") if segments.len() >= 4 => (
            format!("/apis/{}/{}", segments[1], segments[2]),
            &segments[3..],
        ),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let resource = rest.first()?.to_string();
    Some(Target {
        collection: format!("{base}/{resource}"),
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
        resource,
        namespace,
    })
}

/// What the fake answers: a JSON document, or a watch's stream of JSON lines.
pub enum Reply {
    /// A status and a document.
    Json(StatusCode, Value),
    /// A watch: one JSON event per line, until the watch ends.
    Watch(Pin<Box<dyn Stream<Item = Bytes> + Send>>),
}

impl From<(StatusCode, Value)> for Reply {
    fn from((code, value): (StatusCode, Value)) -> Self {
        Reply::Json(code, value)
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> (StatusCode, Value) {
    (
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
        }),
    )
}

fn not_found(kind: &str, name: &str) -> (StatusCode, Value) {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{kind} \"{name}\" not found"),
    )
}

fn conflict(kind: &str, name: &str) -> (StatusCode, Value) {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!("Operation cannot be fulfilled on {kind} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
    )
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let obj = target.as_object_mut().expect("object");
            for (k, v) in fields {
                if v.is_null() {
                    obj.remove(k);
                } else {
                    merge_patch(obj.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn matches_selector(obj: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => obj["metadata"]["labels"][k].as_str() == Some(v),
            None => false,
        })
}

/// Whether `obj` matches a field selector: `metadata.name=X`, `metadata.namespace=X` (also
/// with `==`), comma-separated; other fields match nothing.
fn matches_fields(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) else {
            return false;
        };
        match k {
            "metadata.name" | "metadata.namespace" => {
                let field = k.trim_start_matches("metadata.");
                obj["metadata"][field].as_str() == Some(v)
            }
            _ => false,
        }
    })
}

fn forbidden(method: &Method, t: &Target) -> (StatusCode, Value) {
    let verb = match (method.as_str(), &t.name) {
        ("GET", None) => "list",
        ("GET", Some(_)) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        _ => "access",
    };
    let scope = match &t.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".into(),
    };
    status(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!(
            "{res} is forbidden: User \"system:serviceaccount:maille:maille-controller\" cannot {verb} resource \"{res}\" {scope}",
            res = t.resource
        ),
    )
}

/// One watch event line.
fn event_line(type_: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": type_, "object": object})).expect("json");
    line.push(b'\n');
    Bytes::from(line)
}

/// Where a watch stands: the changes it has sent, and when it ends.
struct Cursor {
    api: FakeApi,
    collection: String,
    namespace: Option<String>,
    selector: String,
    fields: String,
    after: u64,
    epoch: u64,
    deadline: tokio::time::Instant,
    pending: VecDeque<Bytes>,
    done: bool,
    wake: tokio::sync::watch::Receiver<u64>,
}

impl Cursor {
    async fn next(mut self) -> Option<(Bytes, Cursor)> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some((line, self));
            }
            if self.done {
                return None;
            }
            {
                let state = self.api.state.lock().unwrap();
                if state.epoch != self.epoch {
                    return None;
                }
                for c in state.changes.iter().filter(|c| c.rv > self.after) {
                    let in_scope = c.collection == self.collection
                        && self.namespace.as_ref().is_none_or(|ns| *ns == c.namespace)
                        && matches_selector(&c.object, &self.selector)
                        && matches_fields(&c.object, &self.fields);
                    if in_scope {
                        self.pending.push_back(event_line(c.type_, &c.object));
                    }
                }
                self.after = state.resource_version;
            }
            if self.pending.is_empty() {
                tokio::select! {
                    r = self.wake.changed() => if r.is_err() { return None },
                    _ = tokio::time::sleep_until(self.deadline) => return None,
                }
            }
        }
    }
}

impl FakeApi {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes TokenReviews authenticate `token` for `audiences` as `status.user` is (`username`,
    /// `uid`, `extra`, as the API server fills them for a bound ServiceAccount token). Other
    /// tokens, or a review for another audience, are answered `authenticated: false`.
    pub fn add_token(&self, token: &str, audiences: &[&str], user: Value) {
        self.state.lock().unwrap().tokens.insert(
            token.to_string(),
            (audiences.iter().map(|a| a.to_string()).collect(), user),
        );
    }

    /// The answer to a TokenReview, as an API server with a token authenticator gives it.
    fn token_review(&self, body: &[u8]) -> Reply {
        let review: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()).into(),
        };
        let token = review["spec"]["token"].as_str().unwrap_or("");
        let wanted: Vec<String> = review["spec"]["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let state = self.state.lock().unwrap();
        let status_ = match state.tokens.get(token) {
            Some((auds, user)) if wanted.is_empty() || wanted.iter().any(|w| auds.contains(w)) => {
                let matched: Vec<&String> = if wanted.is_empty() {
                    auds.iter().collect()
                } else {
                    wanted.iter().filter(|w| auds.contains(w)).collect()
                };
                json!({"authenticated": true, "user": user, "audiences": matched})
            }
            Some(_) => json!({"authenticated": false,
                "error": "[invalid bearer token, token audiences is invalid for the target audiences]"}),
            None => json!({"authenticated": false, "error": "[invalid bearer token]"}),
        };
        let mut answer = review.clone();
        answer["status"] = status_;
        answer["metadata"] = json!({"creationTimestamp": null});
        (StatusCode::CREATED, answer).into()
    }

    /// The collection and namespace of a kind's objects in `ns`.
    fn collection_of<K: Resource<DynamicType = ()>>(ns: &str) -> (String, String) {
        let t = parse_path(&K::url_path(&(), Some(ns))).expect("a resource path");
        (t.collection, t.namespace.unwrap_or_default())
    }

    /// Records a change for watches; the caller has bumped the resourceVersion.
    fn record(
        state: &mut State,
        collection: &str,
        namespace: &str,
        type_: &'static str,
        obj: &Value,
    ) {
        state.changes.push(Change {
            rv: state.resource_version,
            collection: collection.to_string(),
            namespace: namespace.to_string(),
            type_,
            object: obj.clone(),
        });
    }

    fn wake(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Stores an object (created or changed by someone else), as watches will report it.
    pub fn insert<K>(&self, obj: &K)
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let name = obj.meta().name.clone().expect("named object");
        let mut value = serde_json::to_value(obj).expect("serializable");
        let (collection, ns) = Self::collection_of::<K>(&ns);
        {
            let mut state = self.state.lock().unwrap();
            state.resource_version += 1;
            let rv = state.resource_version;
            value["apiVersion"] = json!(K::api_version(&()));
            value["kind"] = json!(K::kind(&()));
            value["metadata"]["resourceVersion"] = json!(rv.to_string());
            if value["metadata"]["uid"].is_null() {
                value["metadata"]["uid"] = json!(format!("uid-{rv}"));
            }
            let items = state.objects.entry(collection.clone()).or_default();
            let type_ = if items.contains_key(&(ns.clone(), name.clone())) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            items.insert((ns.clone(), name), value.clone());
            Self::record(&mut state, &collection, &ns, type_, &value);
        }
        self.wake();
    }

    /// Deletes an object (someone else did), as watches will report it.
    pub fn remove<K>(&self, ns: &str, name: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        let (collection, ns) = Self::collection_of::<K>(ns);
        {
            let mut state = self.state.lock().unwrap();
            state.resource_version += 1;
            let rv = state.resource_version;
            let removed = state
                .objects
                .get_mut(&collection)
                .and_then(|c| c.remove(&(ns.clone(), name.to_string())));
            if let Some(mut obj) = removed {
                obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                Self::record(&mut state, &collection, &ns, "DELETED", &obj);
            }
        }
        self.wake();
    }

    /// The stored object, if any.
    pub fn get<K>(&self, ns: &str, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let (collection, ns) = Self::collection_of::<K>(ns);
        let state = self.state.lock().unwrap();
        let value = state
            .objects
            .get(&collection)?
            .get(&(ns, name.to_string()))?
            .clone();
        Some(serde_json::from_value(value).expect("stored object deserializes"))
    }

    /// Every stored object of a kind, in every namespace.
    pub fn list<K>(&self) -> Vec<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let (collection, _) = Self::collection_of::<K>("default");
        let state = self.state.lock().unwrap();
        state
            .objects
            .get(&collection)
            .into_iter()
            .flat_map(|c| c.values())
            .map(|v| serde_json::from_value(v.clone()).expect("stored object deserializes"))
            .collect()
    }

    /// Writes so far, as `METHOD resource namespace/name`.
    pub fn writes(&self) -> Vec<String> {
        self.state.lock().unwrap().writes.clone()
    }

    /// Forgets the writes recorded so far.
    pub fn clear_writes(&self) {
        self.state.lock().unwrap().writes.clear();
    }

    /// Requests so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Someone else changes the object (new resourceVersion) right before our next write to it.
    pub fn race_next_write<K>(
        &self,
        ns: &str,
        name: &str,
        change: impl FnOnce(&mut Value) + Send + 'static,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let (collection, ns) = Self::collection_of::<K>(ns);
        let key = format!("{collection}/{ns}/{name}");
        self.state
            .lock()
            .unwrap()
            .races
            .insert(key, Box::new(change));
    }

    /// Stops serving a resource (plural name, e.g. `udproutes`): its CRD is not installed, and
    /// every request about it is answered 404.
    pub fn uninstall(&self, resource: &str) {
        self.state.lock().unwrap().absent.insert(resource.into());
    }

    /// Serves a resource again: its CRD has been installed.
    pub fn install(&self, resource: &str) {
        self.state.lock().unwrap().absent.remove(resource);
    }

    /// Refuses (403) or allows again every request about a resource.
    pub fn set_forbidden(&self, resource: &str, forbidden: bool) {
        let mut state = self.state.lock().unwrap();
        if forbidden {
            state.forbidden.insert(resource.into());
        } else {
            state.forbidden.remove(resource);
        }
    }

    /// Forgets the changes so far: a watch resumed from an earlier resourceVersion is answered
    /// `410 Gone`, as after an etcd compaction.
    pub fn compact(&self) {
        let mut state = self.state.lock().unwrap();
        state.compacted = state.resource_version + 1;
        state.changes.clear();
    }

    /// Ends every open watch, as an API server restart does.
    pub fn end_watches(&self) {
        self.state.lock().unwrap().epoch += 1;
        self.wake();
    }

    /// A client whose requests this server answers, in-process.
    #[cfg(test)]
    pub fn client(&self) -> Client {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<Body>, Response<axum::body::Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let body = body.collect_bytes().await.expect("request body");
                let reply = api.answer(&parts.method, &parts.uri, &parts.headers, &body);
                send.send_response(Self::response(reply));
            }
        });
        Client::new(service, "default")
    }

    fn response(reply: Reply) -> http::Response<axum::body::Body> {
        use futures::StreamExt;
        let (code, body) = match reply {
            Reply::Json(code, value) => (
                code,
                axum::body::Body::from(serde_json::to_vec(&value).unwrap_or_default()),
            ),
            Reply::Watch(stream) => (
                StatusCode::OK,
                axum::body::Body::from_stream(stream.map(Ok::<_, std::convert::Infallible>)),
            ),
        };
        http::Response::builder()
            .status(code)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .expect("response")
    }

    /// Serves the fake over HTTP on an ephemeral loopback port, for binaries under test; the
    /// server stops when the returned task is aborted or dropped with the runtime.
    pub async fn serve(
        &self,
    ) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let api = self.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: http::Uri, headers: http::HeaderMap, body: Bytes| {
                let api = api.clone();
                async move { Self::response(api.answer(&method, &uri, &headers, &body)) }
            },
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((addr, task))
    }

    /// Serves the fake as [`FakeApi::serve`] does and writes a kubeconfig pointing at it into
    /// `dir`; returns the kubeconfig's path and the server task.
    pub async fn serve_kubeconfig(
        &self,
        dir: &std::path::Path,
    ) -> std::io::Result<(std::path::PathBuf, tokio::task::JoinHandle<()>)> {
        let (addr, task) = self.serve().await?;
        let path = dir.join("kubeconfig");
        std::fs::write(&path, Self::kubeconfig(addr))?;
        Ok((path, task))
    }

    /// A kubeconfig that points at a server from [`FakeApi::serve`].
    pub fn kubeconfig(addr: std::net::SocketAddr) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n"
        )
    }

    fn watch(&self, t: &Target, query: &BTreeMap<String, String>) -> Reply {
        let state = self.state.lock().unwrap();
        let from = query
            .get("resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(300);
        let selector = query.get("labelSelector").cloned().unwrap_or_default();
        let fields = query.get("fieldSelector").cloned().unwrap_or_default();
        let mut pending = VecDeque::new();
        let mut done = false;
        let mut after = from;
        if from == 0 {
            // "Any version": the current objects first, as ADDED events.
            let items = state.objects.get(&t.collection).into_iter().flatten();
            for ((ns, _), obj) in items {
                if t.namespace.as_ref().is_none_or(|n| n == ns)
                    && matches_selector(obj, &selector)
                    && matches_fields(obj, &fields)
                {
                    pending.push_back(event_line("ADDED", obj));
                }
            }
            after = state.resource_version;
        } else if from < state.compacted {
            let (_, gone) = status(
                StatusCode::GONE,
                "Expired",
                format!("too old resource version: {from} ({})", state.compacted),
            );
            pending.push_back(event_line("ERROR", &gone));
            done = true;
        }
        let cursor = Cursor {
            api: self.clone(),
            collection: t.collection.clone(),
            namespace: t.namespace.clone(),
            selector,
            fields,
            after,
            epoch: state.epoch,
            deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
            pending,
            done,
            wake: self.changed.subscribe(),
        };
        Reply::Watch(Box::pin(futures::stream::unfold(cursor, Cursor::next)))
    }

    fn answer(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Reply {
        let reply = self.answer_locked(method, uri, headers, body);
        self.wake();
        reply
    }

    fn answer_locked(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Reply {
        let path = uri.path().trim_end_matches('/');
        let query: BTreeMap<String, String> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (percent_decode(k), percent_decode(v)))
            .collect();
        let not_served = || -> Reply {
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("the server could not find the requested resource {path}"),
            )
            .into()
        };
        let Some(t) = parse_path(path) else {
            return not_served();
        };
        {
            let mut state = self.state.lock().unwrap();
            let q = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            state.requests.push(format!("{method} {path}{q}"));
            if state.absent.contains(&t.resource) {
                return not_served();
            }
            if state.forbidden.contains(&t.resource) {
                return forbidden(method, &t).into();
            }
        }
        if *method == Method::POST && t.resource == "tokenreviews" {
            return self.token_review(body);
        }
        let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
        if *method == Method::GET && t.name.is_none() && watching {
            return self.watch(&t, &query);
        }
        let resource = t.resource.as_str();
        let collection = t.collection.clone();
        let ns = t.namespace.clone().unwrap_or_default();
        let name = t.name.clone();
        let mut state = self.state.lock().unwrap();
        let state = &mut *state;

        if *method != Method::GET {
            let target = name.clone().unwrap_or_else(|| {
                serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v["metadata"]["name"].as_str().map(str::to_string))
                    .unwrap_or_default()
            });
            state
                .writes
                .push(format!("{method} {resource} {ns}/{target}"));
            if let Some(race) = state.races.remove(&format!("{collection}/{ns}/{target}")) {
                if let Some(obj) = state
                    .objects
                    .get_mut(&collection)
                    .and_then(|c| c.get_mut(&(ns.clone(), target.clone())))
                {
                    race(obj);
                    state.resource_version += 1;
                    obj["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
                    let obj = obj.clone();
                    Self::record(state, &collection, &ns, "MODIFIED", &obj);
                }
            }
        }
        state.resource_version += 1;
        let rv = state.resource_version.to_string();
        let items = state.objects.entry(collection.clone()).or_default();
        let key = |name: &str| (ns.clone(), name.to_string());

        let (code, value, change) = match (method.clone(), name) {
            (Method::GET, None) => {
                let selector = query.get("labelSelector").cloned().unwrap_or_default();
                let fields = query.get("fieldSelector").cloned().unwrap_or_default();
                let list: Vec<Value> = items
                    .iter()
                    .filter(|((n, _), o)| {
                        t.namespace.as_ref().is_none_or(|ns| ns == n)
                            && matches_selector(o, &selector)
                            && matches_fields(o, &fields)
                    })
                    .map(|(_, o)| o.clone())
                    .collect();
                let api_version = list
                    .first()
                    .and_then(|o| o["apiVersion"].as_str())
                    .unwrap_or("v1")
                    .to_string();
                let value = json!({"apiVersion": api_version, "kind": "List",
                           "metadata": {"resourceVersion": rv}, "items": list});
                (StatusCode::OK, value, None)
            }
            (Method::GET, Some(name)) => match items.get(&key(&name)) {
                Some(obj) => (StatusCode::OK, obj.clone(), None),
                None => return not_found(resource, &name).into(),
            },
            (Method::POST, None) => {
                let mut obj: Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(e) => {
                        return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()).into()
                    }
                };
                let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
                    return status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        "metadata.name: Required value".into(),
                    )
                    .into();
                };
                if items.contains_key(&key(&name)) {
                    return status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("{resource} \"{name}\" already exists"),
                    )
                    .into();
                }
                obj["metadata"]["resourceVersion"] = json!(rv);
                if !ns.is_empty() {
                    obj["metadata"]["namespace"] = json!(ns);
                }
                obj["metadata"]["uid"] = json!(format!("uid-{rv}"));
                items.insert(key(&name), obj.clone());
                (StatusCode::CREATED, obj, Some("ADDED"))
            }
            (Method::PUT, Some(name)) => {
                let mut obj: Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(e) => {
                        return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()).into()
                    }
                };
                let Some(current) = items.get(&key(&name)) else {
                    return not_found(resource, &name).into();
                };
                let sent_rv = obj["metadata"]["resourceVersion"].as_str();
                if sent_rv.is_some() && sent_rv != current["metadata"]["resourceVersion"].as_str() {
                    return conflict(resource, &name).into();
                }
                obj["metadata"]["resourceVersion"] = json!(rv);
                obj["metadata"]["uid"] = current["metadata"]["uid"].clone();
                items.insert(key(&name), obj.clone());
                (StatusCode::OK, obj, Some("MODIFIED"))
            }
            (Method::PATCH, Some(name)) => {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let apply = content_type == "application/apply-patch+yaml";
                let merge = matches!(
                    content_type,
                    "application/merge-patch+json" | "application/strategic-merge-patch+json"
                );
                if !apply && !merge {
                    return status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        format!("this fake speaks merge patch and apply, got {content_type:?}"),
                    )
                    .into();
                }
                // kube sends apply patches as JSON, which is YAML too.
                let patch: Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(e) => {
                        return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()).into()
                    }
                };
                match items.get_mut(&key(&name)) {
                    Some(obj) => {
                        let sent_rv = patch["metadata"]["resourceVersion"].as_str();
                        if merge
                            && sent_rv.is_some()
                            && sent_rv != obj["metadata"]["resourceVersion"].as_str()
                        {
                            return conflict(resource, &name).into();
                        }
                        if t.subresource.as_deref() == Some("status") {
                            // The status subresource changes the status only.
                            let mut status_only = json!({});
                            if let Some(st) = patch.get("status") {
                                status_only["status"] = st.clone();
                            }
                            merge_patch(obj, &status_only);
                        } else {
                            merge_patch(obj, &patch);
                        }
                        obj["metadata"]["resourceVersion"] = json!(rv);
                        (StatusCode::OK, obj.clone(), Some("MODIFIED"))
                    }
                    None if apply => {
                        let mut obj = patch;
                        obj["metadata"]["resourceVersion"] = json!(rv);
                        if !ns.is_empty() {
                            obj["metadata"]["namespace"] = json!(ns);
                        }
                        obj["metadata"]["uid"] = json!(format!("uid-{rv}"));
                        items.insert(key(&name), obj.clone());
                        (StatusCode::CREATED, obj, Some("ADDED"))
                    }
                    None => return not_found(resource, &name).into(),
                }
            }
            (Method::DELETE, Some(name)) => {
                let Some(current) = items.get(&key(&name)) else {
                    return not_found(resource, &name).into();
                };
                let options: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                if let Some(want) = options["preconditions"]["resourceVersion"].as_str() {
                    if Some(want) != current["metadata"]["resourceVersion"].as_str() {
                        return conflict(resource, &name).into();
                    }
                }
                let mut obj = items.remove(&key(&name)).unwrap();
                obj["metadata"]["resourceVersion"] = json!(rv);
                (StatusCode::OK, obj, Some("DELETED"))
            }
            (m, _) => {
                return status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    format!("{m} is not supported on {path}"),
                )
                .into()
            }
        };
        if let Some(type_) = change {
            Self::record(state, &collection, &ns, type_, &value);
        }
        Reply::Json(code, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}, "h": [1]}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}, "h": [1]}));
    }

    #[test]
    fn percent_decoding_of_selectors() {
        assert_eq!(percent_decode("k8s-app%3Dkube-dns"), "k8s-app=kube-dns");
        assert_eq!(
            percent_decode("app.kubernetes.io%2Fmanaged-by%3Dmaille"),
            "app.kubernetes.io/managed-by=maille"
        );
    }

    #[test]
    fn paths_name_collection_namespace_and_object() {
        let t = parse_path("/api/v1/namespaces/shop/services/web").unwrap();
        assert_eq!(t.collection, "/api/v1/services");
        assert_eq!(t.namespace.as_deref(), Some("shop"));
        assert_eq!(t.name.as_deref(), Some("web"));
        let t = parse_path("/apis/discovery.k8s.io/v1/endpointslices").unwrap();
        assert_eq!(t.collection, "/apis/discovery.k8s.io/v1/endpointslices");
        assert_eq!((t.namespace, t.name), (None, None));
        let t = parse_path("/api/v1/namespaces/shop").unwrap();
        assert_eq!(t.collection, "/api/v1/namespaces");
        assert_eq!(t.name.as_deref(), Some("shop"));
        assert!(parse_path("/version").is_none());
    }
}
