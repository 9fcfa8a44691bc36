//! ACL mode: whether a client may reach a service port, from the table's access rules (SMI
//! TrafficTargets). Clients are identified by their IP address.

use std::net::IpAddr;

use crate::compiled::ServiceRuntime;
use crate::split::RequestView;

/// Whether `client` may send this HTTP request to the service of `rt`. Always true outside
/// ACL mode (`acl` is the table's mode).
pub fn admits_request(
    acl: bool,
    rt: &ServiceRuntime,
    client: IpAddr,
    request: &RequestView<'_>,
) -> bool {
    if !acl {
        return true;
    }
    let client = canonical(client);
    rt.service()
        .access
        .iter()
        .zip(rt.access.iter())
        .any(|(rule, sources)| {
            sources.contains(&client)
                && rule
                    .http
                    .as_ref()
                    .is_none_or(|ms| ms.iter().any(|m| request.fits(m)))
        })
}

/// Whether `client` may open a TCP connection or send a UDP datagram to the service of `rt`.
/// Always true outside ACL mode. Rules restricted to HTTP requests do not open a connection.
pub fn admits_connection(acl: bool, rt: &ServiceRuntime, client: IpAddr) -> bool {
    if !acl {
        return true;
    }
    let client = canonical(client);
    rt.service()
        .access
        .iter()
        .zip(rt.access.iter())
        .any(|(rule, sources)| rule.http.is_none() && sources.contains(&client))
}

/// Client addresses compare as the table stores them: an IPv4-mapped IPv6 address as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Counts a denial (the caller logs it as a [`crate::refusal::Refused`]).
pub fn count_denied(rt: &ServiceRuntime, client: IpAddr) {
    let [ns, name, port] = rt.labels();
    crate::metrics::register()
        .acl_denied
        .with_label_values(&[ns, name, port, &client.to_string()])
        .inc();
}

#[cfg(test)]
mod tests {
    use config_model::testing::{http, service, table};
    use config_model::{AccessRuleSpec, HttpMatchSpec, TrafficType};

    use std::sync::Arc;

    use config_model::{ServiceId, Table, TableSpec};

    use super::*;
    use crate::compiled::CompiledTable;

    fn compile(spec: &TableSpec) -> Arc<CompiledTable> {
        let store = crate::store::TableStore::new();
        store.store(Table::try_from(spec).unwrap());
        store.current()
    }

    fn id(t: &CompiledTable, i: usize) -> ServiceId {
        t.iter().nth(i).unwrap().0
    }

    fn rule(sources: &[&str], http: Option<Vec<HttpMatchSpec>>) -> AccessRuleSpec {
        AccessRuleSpec {
            name: "shop/tt".into(),
            sources: sources.iter().map(|s| s.to_string()).collect(),
            identities: vec![],
            http,
        }
    }

    #[test]
    fn http_rules_need_the_source_and_a_fitting_match() {
        let mut web = http("shop", "web", 5000, &["10.0.0.1:80"]);
        web.access.push(rule(
            &["127.0.0.2"],
            Some(vec![HttpMatchSpec {
                path_regex: Some("/api".into()),
                methods: vec!["*".into()],
                ..Default::default()
            }]),
        ));
        let mut db = service(
            "shop",
            "db",
            5432,
            10000,
            TrafficType::Tcp,
            &["10.0.0.2:5432"],
        );
        db.access.push(rule(&["127.0.0.2"], None));
        let mut spec = table(1, vec![web, db]);
        spec.acl = true;
        let t = compile(&spec);
        let h = http::HeaderMap::new();
        let req = |path| RequestView {
            method: "POST",
            path,
            headers: &h,
        };
        let (a, b) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let v4_mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert!(admits_request(t.acl, t.runtime(id(&t, 0)), a, &req("/api")));
        assert!(admits_request(
            t.acl,
            t.runtime(id(&t, 0)),
            v4_mapped,
            &req("/api")
        ));
        assert!(!admits_request(t.acl, t.runtime(id(&t, 0)), a, &req("/")));
        assert!(!admits_request(
            t.acl,
            t.runtime(id(&t, 0)),
            b,
            &req("/api")
        ));
        // Methods are case-sensitive (RFC 9110): `post` does not fit a `POST` rule.
        let mut only_post = spec.clone();
        only_post.services[0].access[0].http.as_mut().unwrap()[0].methods = vec!["POST".into()];
        let t2 = compile(&only_post);
        assert!(admits_request(
            t2.acl,
            t2.runtime(id(&t2, 0)),
            a,
            &req("/api")
        ));
        let lower = RequestView {
            method: "post",
            path: "/api",
            headers: &h,
        };
        assert!(!admits_request(t2.acl, t2.runtime(id(&t2, 0)), a, &lower));
        assert!(
            !admits_connection(t.acl, t.runtime(id(&t, 0)), a),
            "HTTP-only rule opens no raw connection"
        );
        assert!(admits_connection(t.acl, t.runtime(id(&t, 1)), a));
        assert!(!admits_connection(t.acl, t.runtime(id(&t, 1)), b));
        assert_eq!(
            crate::refusal::Refused::access_denied(&t.services()[1].key, b).body(),
            "maille: access denied: no TrafficTarget allows 127.0.0.3 to reach shop/db:5432\n"
        );
        spec.acl = false;
        let open = compile(&spec);
        assert!(
            admits_connection(open.acl, open.runtime(id(&open, 1)), b),
            "ACL off: everything passes"
        );
    }
}
