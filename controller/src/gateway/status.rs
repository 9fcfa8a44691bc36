//! The `status.parents[]` entries Maille writes on a route: one per Service parentRef, with an
//! `Accepted` and a `ResolvedRefs` condition (reasons of the specification), merged into the
//! route's current status so that the entries of other controllers stay as they are.

use super::crd::{limits, Condition, ParentReference, RouteParentStatus, RouteStatus};
use super::CONTROLLER_NAME;

/// Condition types.
pub mod condition {
    /// Whether the route is attached to the parent and its rules are in effect.
    pub const ACCEPTED: &str = "Accepted";
    /// Whether every reference of the route (backends) resolved.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
}

/// Condition reasons, as the specification names them.
pub mod reason {
    /// Accepted=True.
    pub const ACCEPTED: &str = "Accepted";
    /// Accepted=False: the parent does not exist, is not meshed, or has no such port.
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    /// Accepted=False: a field has a value Maille does not support (or that is invalid).
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    /// ResolvedRefs=True.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// ResolvedRefs=False: a backend Service (port) is not in the mesh.
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    /// ResolvedRefs=False: a backend is not a core Service.
    pub const INVALID_KIND: &str = "InvalidKind";
    /// ResolvedRefs=False: a backend in another namespace (Maille honours no ReferenceGrant).
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
}

/// A condition's outcome before it is dated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Verdict {
    /// `True` when `true`.
    pub ok: bool,
    /// A reason of [`reason`].
    pub reason: &'static str,
    /// What happened, for people (already cut).
    pub message: String,
}

impl Verdict {
    /// A true condition.
    pub fn yes(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict {
            ok: true,
            reason,
            message: message.into(),
        }
    }

    /// A false condition.
    pub fn no(reason: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        Verdict {
            ok: false,
            reason,
            message: config_model::cut::cut_message(&message, config_model::cut::MAX_MESSAGE)
                .into_owned(),
        }
    }
}

/// What Maille concluded for one Service parentRef of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentOutcome {
    /// The parentRef as written.
    pub parent_ref: ParentReference,
    /// The `Accepted` condition.
    pub accepted: Verdict,
    /// The `ResolvedRefs` condition.
    pub resolved: Verdict,
    /// The service ports the route attached to for this parent (none when not accepted).
    pub ports: Vec<config_model::ServiceKey>,
}

/// Route kinds Maille writes statuses on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    /// HTTPRoute.
    Http,
    /// GRPCRoute.
    Grpc,
}

impl RouteKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

/// Which route a status is for: kind, namespace, name and uid (a route deleted and created
/// again under its name is another route).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    /// Kind.
    pub kind: RouteKind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid` (empty when the object has none, e.g. from a manifests folder).
    pub uid: String,
}

impl std::fmt::Display for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// What Maille concluded for a route: one outcome per Service parentRef, in the order of
/// `spec.parentRefs` (at most [`limits::STATUS_PARENTS`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteOutcome {
    /// The route.
    pub key: RouteKey,
    /// `metadata.generation` the outcome was computed from.
    pub generation: Option<i64>,
    /// Per Service parentRef.
    pub parents: Vec<ParentOutcome>,
}

/// The route's status with Maille's entries replaced by `outcome`'s, the entries of other
/// controllers kept (first, in their order; then Maille's, as many as the list's bound leaves
/// room for). A condition whose status did not change keeps its `lastTransitionTime`; `now` (RFC
/// 3339) dates the others.
pub fn merged(current: Option<&RouteStatus>, outcome: &RouteOutcome, now: &str) -> RouteStatus {
    let previous: Vec<&RouteParentStatus> = current
        .map(|s| s.parents.iter().collect())
        .unwrap_or_default();
    let mut parents: Vec<RouteParentStatus> = previous
        .iter()
        .filter(|p| p.controller_name != CONTROLLER_NAME)
        .map(|p| (*p).clone())
        .collect();
    let room = limits::STATUS_PARENTS.saturating_sub(parents.len());
    for o in outcome.parents.iter().take(room) {
        let before = previous.iter().find(|p| {
            p.controller_name == CONTROLLER_NAME && same_parent(&p.parent_ref, &o.parent_ref)
        });
        let condition = |type_: &str, v: &Verdict| {
            let status = if v.ok { "True" } else { "False" };
            let since = before
                .and_then(|b| b.conditions.iter().find(|c| c.type_ == type_))
                .filter(|c| c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.to_string());
            Condition {
                type_: type_.to_string(),
                status: status.to_string(),
                observed_generation: outcome.generation,
                last_transition_time: since,
                reason: v.reason.to_string(),
                message: v.message.clone(),
            }
        };
        parents.push(RouteParentStatus {
            parent_ref: o.parent_ref.clone(),
            controller_name: CONTROLLER_NAME.to_string(),
            conditions: vec![
                condition(condition::ACCEPTED, &o.accepted),
                condition(condition::RESOLVED_REFS, &o.resolved),
            ],
        });
    }
    RouteStatus { parents }
}

/// Whether two parentRefs name the same parent (defaults applied).
fn same_parent(a: &ParentReference, b: &ParentReference) -> bool {
    a.group.as_deref().unwrap_or(super::GROUP) == b.group.as_deref().unwrap_or(super::GROUP)
        && a.kind.as_deref().unwrap_or("Gateway") == b.kind.as_deref().unwrap_or("Gateway")
        && a.namespace == b.namespace
        && a.name == b.name
        && a.section_name == b.section_name
        && a.port == b.port
}

/// Whether the route's current status already says what `outcome` says (ignoring dates).
pub fn up_to_date(current: Option<&RouteStatus>, outcome: &RouteOutcome) -> bool {
    let Some(current) = current else {
        return outcome.parents.is_empty();
    };
    // Dated with a timestamp no real status carries: equal only if every date was kept.
    let merged = merged(Some(current), outcome, "");
    let normalise = |s: &RouteStatus| {
        let mut s = s.clone();
        for p in &mut s.parents {
            for c in &mut p.conditions {
                c.last_transition_time.clear();
            }
        }
        s
    };
    normalise(&merged) == normalise(current)
}

/// Brings the route's status to `outcome`: reads the route, and unless its status already says
/// it, writes the merge of [`merged`] to the status subresource with the resourceVersion read
/// (a route changed in between answers 409, and the write is retried with what it became).
/// Nothing when the route is gone or is another object than the one translated (uid).
pub async fn write(client: &kube::Client, outcome: &RouteOutcome) -> Result<(), kube::Error> {
    match outcome.key.kind {
        RouteKind::Http => write_kind::<super::HTTPRoute>(client, outcome).await,
        RouteKind::Grpc => write_kind::<super::GRPCRoute>(client, outcome).await,
    }
}

/// What [`write`] needs of a route type.
trait WithStatus:
    kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    fn route_status(&self) -> Option<&RouteStatus>;
}

impl WithStatus for super::HTTPRoute {
    fn route_status(&self) -> Option<&RouteStatus> {
        self.status.as_ref()
    }
}

impl WithStatus for super::GRPCRoute {
    fn route_status(&self) -> Option<&RouteStatus> {
        self.status.as_ref()
    }
}

async fn write_kind<K: WithStatus>(
    client: &kube::Client,
    outcome: &RouteOutcome,
) -> Result<(), kube::Error> {
    use kube::api::{Api, Patch, PatchParams};
    let key = &outcome.key;
    let api: Api<K> = Api::namespaced(client.clone(), &key.namespace);
    let Some(route) = api.get_opt(&key.name).await? else {
        return Ok(());
    };
    let meta = route.meta();
    if !key.uid.is_empty() && meta.uid.as_deref() != Some(key.uid.as_str()) {
        return Ok(());
    }
    if up_to_date(route.route_status(), outcome) {
        return Ok(());
    }
    let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ))
    .ok()
    .and_then(|v| v.as_str().map(str::to_string))
    .unwrap_or_default();
    let status = merged(route.route_status(), outcome, &now);
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": meta.resource_version},
        "status": status,
    });
    api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str) -> ParentReference {
        ParentReference {
            group: Some(String::new()),
            kind: Some("Service".into()),
            name: name.into(),
            ..ParentReference::default()
        }
    }

    fn outcome(accepted: bool) -> RouteOutcome {
        RouteOutcome {
            key: RouteKey {
                kind: RouteKind::Http,
                namespace: "shop".into(),
                name: "web".into(),
                uid: "u1".into(),
            },
            generation: Some(3),
            parents: vec![ParentOutcome {
                parent_ref: service("web"),
                accepted: if accepted {
                    Verdict::yes(reason::ACCEPTED, "attached to shop/web port 80")
                } else {
                    Verdict::no(reason::NO_MATCHING_PARENT, "no meshed Service shop/web")
                },
                resolved: Verdict::yes(reason::RESOLVED_REFS, "every backend resolved"),
                ports: Vec::new(),
            }],
        }
    }

    fn other_controller() -> RouteParentStatus {
        RouteParentStatus {
            parent_ref: ParentReference {
                name: "gw".into(),
                ..ParentReference::default()
            },
            controller_name: "example.com/gateway".into(),
            conditions: vec![Condition {
                type_: "Accepted".into(),
                status: "True".into(),
                observed_generation: Some(1),
                last_transition_time: "2026-01-01T00:00:00Z".into(),
                reason: "Accepted".into(),
                message: String::new(),
            }],
        }
    }

    #[test]
    fn other_controllers_entries_stay_and_ours_are_replaced() {
        let current = RouteStatus {
            parents: vec![other_controller()],
        };
        let first = merged(Some(&current), &outcome(false), "2026-12-03T06:00:00Z");
        assert_eq!(first.parents.len(), 2);
        assert_eq!(first.parents[0], other_controller());
        let ours = &first.parents[1];
        assert_eq!(ours.controller_name, CONTROLLER_NAME);
        assert_eq!(ours.conditions[0].type_, "Accepted");
        assert_eq!(ours.conditions[0].status, "False");
        assert_eq!(ours.conditions[0].reason, "NoMatchingParent");
        assert_eq!(ours.conditions[0].observed_generation, Some(3));
        assert_eq!(ours.conditions[1].type_, "ResolvedRefs");
        assert!(up_to_date(Some(&first), &outcome(false)));
        assert!(!up_to_date(Some(&first), &outcome(true)));

        // Accepted flips: its date moves; ResolvedRefs did not change: its date stays.
        let second = merged(Some(&first), &outcome(true), "2026-12-03T07:00:00Z");
        assert_eq!(second.parents.len(), 2, "replaced, not appended");
        let ours = &second.parents[1];
        assert_eq!(ours.conditions[0].status, "True");
        assert_eq!(
            ours.conditions[0].last_transition_time,
            "2026-12-03T07:00:00Z"
        );
        assert_eq!(
            ours.conditions[1].last_transition_time,
            "2026-12-03T06:00:00Z"
        );
    }

    #[test]
    fn a_route_without_service_parents_loses_only_our_entries() {
        let current = RouteStatus {
            parents: vec![other_controller()],
        };
        let mut o = outcome(true);
        let with_ours = merged(Some(&current), &o, "t");
        o.parents.clear();
        let without = merged(Some(&with_ours), &o, "t2");
        assert_eq!(without.parents, vec![other_controller()]);
        assert!(up_to_date(None, &o));
    }

    #[test]
    fn the_list_bound_leaves_room_for_others_first() {
        let current = RouteStatus {
            parents: vec![other_controller(); limits::STATUS_PARENTS],
        };
        let full = merged(Some(&current), &outcome(true), "t");
        assert_eq!(full.parents.len(), limits::STATUS_PARENTS);
        assert!(full
            .parents
            .iter()
            .all(|p| p.controller_name != CONTROLLER_NAME));
    }
}
