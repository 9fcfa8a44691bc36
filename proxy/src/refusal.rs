//! Traffic the proxy turns away by its own decision, with one name per reason for HTTP, TCP
//! and UDP alike: the `reason` label of UDP drops, the end reason of spans, and the one log line
//! every refusal writes.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use config_model::ServiceKey;

/// Why traffic is refused before an endpoint sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No service is mapped to the listener port (and, for HTTP, the Host).
    NoRoute,
    /// ACL mode and no TrafficTarget admits the client.
    AccessDenied,
    /// A traffic split that applies has only zero weights.
    NoTraffic,
    /// The service has no ready endpoint.
    NoEndpoint,
    /// A Gateway API route entry sent the request to a backendRef that did not resolve (or
    /// its weights are all 0): 500, as the Gateway API requires.
    BackendNotFound,
}

impl Refusal {
    /// The reason's name in metric labels, span attributes and logs.
    pub const fn reason(self) -> &'static str {
        match self {
            Refusal::NoRoute => "no_route",
            Refusal::AccessDenied => "access_denied",
            Refusal::NoTraffic => "no_traffic",
            Refusal::NoEndpoint => "no_endpoint",
            Refusal::BackendNotFound => "backend_not_found",
        }
    }

    /// The status an HTTP client is answered with.
    pub const fn http_status(self) -> u16 {
        match self {
            Refusal::NoRoute => 404,
            Refusal::AccessDenied => 403,
            Refusal::NoTraffic | Refusal::NoEndpoint => 503,
            Refusal::BackendNotFound => 500,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// A refusal and what it is about, in words a client or an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub refusal: Refusal,
    /// What was refused, e.g. `no mesh route matches host "x" on port 5000`.
    pub message: String,
}

impl Refused {
    /// Nothing is mapped to the listener port; `what` says what was looked for.
    pub fn no_route(what: impl fmt::Display) -> Refused {
        Refused {
            refusal: Refusal::NoRoute,
            message: format!("no mesh route matches {what}"),
        }
    }

    /// No TrafficTarget admits `client` to `service`.
    pub fn access_denied(service: &ServiceKey, client: IpAddr) -> Refused {
        Refused {
            refusal: Refusal::AccessDenied,
            message: format!("access denied: no TrafficTarget allows {client} to reach {service}"),
        }
    }

    /// Traffic split `split` applies and sends nothing anywhere.
    pub fn no_traffic(split: &str) -> Refused {
        Refused {
            refusal: Refusal::NoTraffic,
            message: format!("traffic split {split} sends no traffic (all weights are 0)"),
        }
    }

    /// Rule `rule` of route `route` sent the request to a backend that did not resolve.
    pub fn backend_not_found(route: &str, rule: u32) -> Refused {
        Refused {
            refusal: Refusal::BackendNotFound,
            message: format!(
                "rule {rule} of route {route} sends this request to a backend that does not exist or is not meshed"
            ),
        }
    }

    /// `service` has no ready endpoint.
    pub fn no_endpoint(service: &ServiceKey) -> Refused {
        Refused {
            refusal: Refusal::NoEndpoint,
            message: format!("service {service} has no ready endpoints"),
        }
    }

    /// The plain-text body an HTTP client gets.
    pub fn body(&self) -> String {
        format!("maille: {}\n", self.message)
    }

    /// The one log line of a refusal, for every traffic type (debug: a line per request,
    /// connection or datagram would flood the log at info under a misconfigured client).
    pub fn log(&self, traffic: &'static str, client: Option<SocketAddr>) {
        tracing::debug!(traffic, reason = self.refusal.reason(), client = ?client, "Refused: {}", self.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_one_name_and_status() {
        let all = [
            (Refusal::NoRoute, "no_route", 404),
            (Refusal::AccessDenied, "access_denied", 403),
            (Refusal::NoTraffic, "no_traffic", 503),
            (Refusal::NoEndpoint, "no_endpoint", 503),
            (Refusal::BackendNotFound, "backend_not_found", 500),
        ];
        for (r, name, status) in all {
            assert_eq!((r.reason(), r.http_status()), (name, status));
            assert_eq!(r.to_string(), name);
        }
    }

    #[test]
    fn bodies_name_what_was_refused() {
        let key = ServiceKey {
            namespace: "shop".into(),
            name: "db".into(),
            port: 5432,
        };
        assert_eq!(
            Refused::access_denied(&key, [127, 0, 0, 3].into()).body(),
            "maille: access denied: no TrafficTarget allows 127.0.0.3 to reach shop/db:5432\n"
        );
        assert_eq!(
            Refused::no_traffic("shop/canary").body(),
            "maille: traffic split shop/canary sends no traffic (all weights are 0)\n"
        );
    }
}
