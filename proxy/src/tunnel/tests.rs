use super::*;

fn claim() -> StreamClaim {
    StreamClaim {
        target: "10.1.2.3:8080".parse().unwrap(),
        protocol: Protocol::Udp,
        source_ip: Some("10.0.0.7".parse().unwrap()),
        identity: Some("shop/web".parse().unwrap()),
        service: ServiceKey {
            namespace: "shop".into(),
            name: "db".into(),
            port: 5432,
        },
    }
}

#[test]
fn a_claim_survives_its_request() {
    let c = claim();
    assert_eq!(StreamClaim::from_request(&c.to_request()).unwrap(), c);
    let anonymous = StreamClaim {
        identity: None,
        source_ip: None,
        protocol: Protocol::Tcp,
        ..claim()
    };
    assert_eq!(
        StreamClaim::from_request(&anonymous.to_request()).unwrap(),
        anonymous
    );
}

#[test]
fn a_bad_claim_is_refused_naming_the_field_and_value() {
    let cases: [(&str, &str, &str); 6] = [
        (header::SOURCE_IP, "10.0.0.300", header::SOURCE_IP),
        (header::SOURCE_IDENTITY, "shop", header::SOURCE_IDENTITY),
        (header::SOURCE_IDENTITY, "Shop/WEB", header::SOURCE_IDENTITY),
        (header::SERVICE, "shop/db", header::SERVICE),
        (header::SERVICE, "shop/db:0", header::SERVICE),
        (header::PROTOCOL, "sctp", header::PROTOCOL),
    ];
    for (name, value, field) in cases {
        let mut req = claim().to_request();
        req.headers_mut()
            .insert(name, http::HeaderValue::from_str(value).unwrap());
        let e = StreamClaim::from_request(&req).unwrap_err();
        assert_eq!(e.field, field, "{name}: {value}");
        assert_eq!(e.value, value);
    }
    // Repeated, overlong, and not CONNECT.
    let mut req = claim().to_request();
    req.headers_mut()
        .append(header::SOURCE_IDENTITY, "shop/other".parse().unwrap());
    assert_eq!(
        StreamClaim::from_request(&req).unwrap_err().reason,
        "repeated"
    );
    let mut req = claim().to_request();
    let long = format!("shop/{}", "a".repeat(5000));
    req.headers_mut()
        .insert(header::SOURCE_IDENTITY, long.parse().unwrap());
    let e = StreamClaim::from_request(&req).unwrap_err();
    assert!(e.value.len() <= 64, "quoted value cut: {}", e.value.len());
    let mut req = claim().to_request();
    *req.method_mut() = Method::GET;
    assert_eq!(
        StreamClaim::from_request(&req).unwrap_err().field,
        ":method"
    );
    let mut req = claim().to_request();
    *req.uri_mut() = "db.shop:5432".parse().unwrap();
    assert_eq!(
        StreamClaim::from_request(&req).unwrap_err().field,
        ":authority"
    );
}
