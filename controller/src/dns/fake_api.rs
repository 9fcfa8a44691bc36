//! An in-memory Kubernetes API server behind a real `kube::Client` (tower-test mock), answering
//! the calls `prepare` and `cleanup` make as the real one does: GET, list with label selectors,
//! POST, PUT with resourceVersion checks, JSON merge PATCH, DELETE with preconditions, 404s
//! and 409s. It records every write so tests can assert what changed, and what did not.
//! In-process through `client()` (unit tests), or over loopback HTTP through `serve()` (tests
//! of the `maille-controller` binary; feature `testing`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

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

#[derive(Default)]
struct State {
    /// Collection path (`/api/v1/namespaces/kube-system/configmaps`) to name to object.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    resource_version: u64,
    writes: Vec<String>,
    /// A change someone else makes just before our next write of that object.
    races: BTreeMap<String, Mutation>,
}

/// The fake API server. Clones share state.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

/// Collections this server knows: the last segment of a collection path.
const RESOURCES: &[(&str, &str)] = &[
    ("configmaps", "ConfigMap"),
    ("deployments", "Deployment"),
    ("services", "Service"),
];

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

impl FakeApi {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    fn collection_of<K: Resource<DynamicType = ()>>(ns: &str) -> String {
        K::url_path(&(), Some(ns))
    }

    /// Stores an object as if created earlier.
    pub fn insert<K>(&self, obj: &K)
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let ns = obj.meta().namespace.clone().expect("namespaced object");
        let name = obj.meta().name.clone().expect("named object");
        let mut value = serde_json::to_value(obj).expect("serializable");
        let mut state = self.state.lock().unwrap();
        state.resource_version += 1;
        value["apiVersion"] = json!(K::api_version(&()));
        value["kind"] = json!(K::kind(&()));
        value["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
        state
            .objects
            .entry(Self::collection_of::<K>(&ns))
            .or_default()
            .insert(name, value);
    }

    /// The stored object, if any.
    pub fn get<K>(&self, ns: &str, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let state = self.state.lock().unwrap();
        let value = state
            .objects
            .get(&Self::collection_of::<K>(ns))?
            .get(name)?
            .clone();
        Some(serde_json::from_value(value).expect("stored object deserializes"))
    }

    /// Writes so far, as `METHOD resource namespace/name`.
    pub fn writes(&self) -> Vec<String> {
        self.state.lock().unwrap().writes.clone()
    }

    /// Forgets the writes recorded so far.
    pub fn clear_writes(&self) {
        self.state.lock().unwrap().writes.clear();
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
        let key = format!("{}/{name}", Self::collection_of::<K>(ns));
        self.state
            .lock()
            .unwrap()
            .races
            .insert(key, Box::new(change));
    }

    /// A client whose requests this server answers, in-process.
    #[cfg(test)]
    pub fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let body = body.collect_bytes().await.expect("request body");
                let (code, value) = api.answer(&parts.method, &parts.uri, &parts.headers, &body);
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&value).unwrap()))
                    .unwrap();
                send.send_response(response);
            }
        });
        Client::new(service, "default")
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
            move |method: Method,
                  uri: http::Uri,
                  headers: http::HeaderMap,
                  body: axum::body::Bytes| {
                let api = api.clone();
                async move {
                    let (code, value) = api.answer(&method, &uri, &headers, &body);
                    (
                        code,
                        [(http::header::CONTENT_TYPE, "application/json")],
                        serde_json::to_vec(&value).unwrap_or_default(),
                    )
                }
            },
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((addr, task))
    }

    /// A kubeconfig that points at a server from [`FakeApi::serve`].
    pub fn kubeconfig(addr: std::net::SocketAddr) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n"
        )
    }

    fn answer(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> (StatusCode, Value) {
        let path = uri.path().trim_end_matches('/');
        let query: BTreeMap<String, String> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (percent_decode(k), percent_decode(v)))
            .collect();
        let (parent, last) = path.rsplit_once('/').unwrap_or(("", path));
        let (collection, name, resource) =
            if let Some((res, _)) = RESOURCES.iter().find(|(r, _)| *r == last) {
                (path.to_string(), None, *res)
            } else {
                let res = parent.rsplit('/').next().unwrap_or("");
                match RESOURCES.iter().find(|(r, _)| *r == res) {
                    Some((r, _)) => (parent.to_string(), Some(last.to_string()), *r),
                    None => {
                        return status(
                            StatusCode::NOT_FOUND,
                            "NotFound",
                            format!("the server could not find the requested resource {path}"),
                        )
                    }
                }
            };
        let kind = RESOURCES.iter().find(|(r, _)| *r == resource).unwrap().1;
        let ns = collection
            .split('/')
            .skip_while(|s| *s != "namespaces")
            .nth(1)
            .unwrap_or("")
            .to_string();
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
            if let Some(race) = state.races.remove(&format!("{collection}/{target}")) {
                if let Some(obj) = state
                    .objects
                    .get_mut(&collection)
                    .and_then(|c| c.get_mut(&target))
                {
                    race(obj);
                    state.resource_version += 1;
                    obj["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
                }
            }
        }
        state.resource_version += 1;
        let rv = state.resource_version.to_string();
        let items = state.objects.entry(collection.clone()).or_default();

        match (method.clone(), name) {
            (Method::GET, None) => {
                let selector = query.get("labelSelector").cloned().unwrap_or_default();
                let list: Vec<Value> = items
                    .values()
                    .filter(|o| matches_selector(o, &selector))
                    .cloned()
                    .collect();
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": format!("{kind}List"),
                           "metadata": {"resourceVersion": rv}, "items": list}),
                )
            }
            (Method::GET, Some(name)) => match items.get(&name) {
                Some(obj) => (StatusCode::OK, obj.clone()),
                None => not_found(resource, &name),
            },
            (Method::POST, None) => {
                let mut obj: Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
                };
                let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
                    return status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        "metadata.name: Required value".into(),
                    );
                };
                if items.contains_key(&name) {
                    return status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("{resource} \"{name}\" already exists"),
                    );
                }
                obj["metadata"]["resourceVersion"] = json!(rv);
                obj["metadata"]["namespace"] = json!(ns);
                obj["metadata"]["uid"] = json!(format!("uid-{rv}"));
                items.insert(name, obj.clone());
                (StatusCode::CREATED, obj)
            }
            (Method::PUT, Some(name)) => {
                let mut obj: Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
                };
                let Some(current) = items.get(&name) else {
                    return not_found(resource, &name);
                };
                let sent_rv = obj["metadata"]["resourceVersion"].as_str();
                if sent_rv.is_some() && sent_rv != current["metadata"]["resourceVersion"].as_str() {
                    return conflict(resource, &name);
                }
                obj["metadata"]["resourceVersion"] = json!(rv);
                items.insert(name, obj.clone());
                (StatusCode::OK, obj)
            }
            (Method::PATCH, Some(name)) => {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if content_type != "application/merge-patch+json" {
                    return status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        format!("this fake only speaks merge patch, got {content_type:?}"),
                    );
                }
                let patch: Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
                };
                let Some(obj) = items.get_mut(&name) else {
                    return not_found(resource, &name);
                };
                merge_patch(obj, &patch);
                obj["metadata"]["resourceVersion"] = json!(rv);
                (StatusCode::OK, obj.clone())
            }
            (Method::DELETE, Some(name)) => {
                let Some(current) = items.get(&name) else {
                    return not_found(resource, &name);
                };
                let options: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                if let Some(want) = options["preconditions"]["resourceVersion"].as_str() {
                    if Some(want) != current["metadata"]["resourceVersion"].as_str() {
                        return conflict(resource, &name);
                    }
                }
                let obj = items.remove(&name).unwrap();
                (StatusCode::OK, obj)
            }
            (m, _) => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{m} is not supported on {path}"),
            ),
        }
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
}
