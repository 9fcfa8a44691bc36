use proptest::prelude::*;

use super::*;

/// A window given by hand: network error ratio, (status, count) pairs, a fixed latency.
struct Fixed {
    network: f64,
    statuses: Vec<(u16, u64)>,
    latency_ms: f64,
}

impl WindowStats for Fixed {
    fn network_error_ratio(&self) -> f64 {
        self.network
    }
    fn status_count(&self, from: u16, to: u16) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| (from..to).contains(s))
            .map(|(_, n)| n)
            .sum()
    }
    fn latency_at_quantile_ms(&self, _q: f64) -> f64 {
        self.latency_ms
    }
}

fn window(network: f64, statuses: &[(u16, u64)], latency_ms: f64) -> Fixed {
    Fixed {
        network,
        statuses: statuses.to_vec(),
        latency_ms,
    }
}

#[test]
fn parses_the_traefik_examples() {
    let e = parse("NetworkErrorRatio() > 0.5").unwrap();
    assert_eq!(
        e.ast,
        Expr::Compare {
            left: Operand::Metric(Metric::NetworkErrorRatio),
            op: CmpOp::Gt,
            right: Operand::Number(0.5),
        }
    );
    let e = parse("ResponseCodeRatio(500, 600, 0, 600) > 0.25").unwrap();
    assert_eq!(
        e.ast,
        Expr::Compare {
            left: Operand::Metric(Metric::ResponseCodeRatio {
                from: 500,
                to: 600,
                dividend_from: 0,
                dividend_to: 600
            }),
            op: CmpOp::Gt,
            right: Operand::Number(0.25),
        }
    );
    let e = parse("LatencyAtQuantileMS(50.0) > 100").unwrap();
    assert!(e.uses_latency());
    assert_eq!(e.source, "LatencyAtQuantileMS(50.0) > 100");
}

#[test]
fn and_binds_tighter_than_or_and_parentheses_override() {
    let a = "NetworkErrorRatio() > 0.5";
    let b = "LatencyAtQuantileMS(99) >= 10";
    let c = "ResponseCodeRatio(500,600,0,600)!=0";
    let e = parse(&format!("{a} || {b} && {c}")).unwrap();
    let Expr::Or(_, right) = &e.ast else {
        panic!("expected || at the top: {e:?}")
    };
    assert!(matches!(**right, Expr::And(..)));
    let e = parse(&format!("({a} || {b}) && {c}")).unwrap();
    assert!(matches!(e.ast, Expr::And(..)), "{e:?}");
}

#[test]
fn evaluates_against_a_window() {
    let e =
        parse("NetworkErrorRatio() > 0.5 || ResponseCodeRatio(500, 600, 0, 600) > 0.25").unwrap();
    assert!(!e.evaluate(&window(0.1, &[(200, 9), (503, 1)], 1.0)));
    assert!(e.evaluate(&window(0.6, &[(200, 10)], 1.0)));
    assert!(e.evaluate(&window(0.0, &[(200, 2), (502, 1)], 1.0)));
    // An empty dividend range reads as 0, not NaN.
    assert!(!e.evaluate(&window(0.0, &[], 1.0)));

    let e = parse("LatencyAtQuantileMS(50) > 100 && 0.1 < NetworkErrorRatio()").unwrap();
    assert!(!e.evaluate(&window(0.2, &[], 50.0)));
    assert!(e.evaluate(&window(0.2, &[], 150.0)));
    assert!(!e.evaluate(&window(0.05, &[], 150.0)));

    for (src, want) in [
        ("NetworkErrorRatio() >= 0.5", true),
        ("NetworkErrorRatio() <= 0.5", true),
        ("NetworkErrorRatio() == 0.5", true),
        ("NetworkErrorRatio() != 0.5", false),
        ("NetworkErrorRatio() < 0.5", false),
    ] {
        assert_eq!(
            parse(src).unwrap().evaluate(&window(0.5, &[], 0.0)),
            want,
            "{src}"
        );
    }
}

#[test]
fn status_bounds_cover_every_range() {
    let e = parse(
        "ResponseCodeRatio(500, 600, 0, 600) > 0.5 || ResponseCodeRatio(429, 430, 0, 600) > 0.1",
    )
    .unwrap();
    assert_eq!(e.status_bounds(), vec![0, 429, 430, 500, 600]);
    assert!(!e.uses_latency());
}

fn err(src: &str) -> ExprError {
    parse(src).expect_err(src)
}

#[test]
fn errors_name_the_column_and_what_was_expected() {
    let e = err("Foo() > 1");
    assert_eq!(e.column, 1);
    assert!(e.message.contains("unknown function \"Foo\""), "{e}");
    assert!(e.message.contains("NetworkErrorRatio()"), "{e}");

    let e = err("NetworkErrorRatio() > ");
    assert_eq!(e.column, 23);
    assert!(e.message.contains("found the end"), "{e}");

    let e = err("NetworkErrorRatio() 0.5");
    assert_eq!(e.column, 21);
    assert!(e.message.contains("expected a comparison"), "{e}");

    let e = err("NetworkErrorRatio() > 0.5 & LatencyAtQuantileMS(50) > 1");
    assert_eq!(e.column, 27);
    assert!(e.message.contains("&&"), "{e}");

    let e = err("(NetworkErrorRatio() > 0.5");
    assert!(e.message.contains("\")\""), "{e}");

    let e = err("NetworkErrorRatio() > 0.5)");
    assert_eq!(e.column, 26);

    assert!(err("").message.contains("empty"));
    assert!(err("   ").message.contains("empty"));
    assert!(err("1 > 2").message.contains("no function"));
    assert!(err("NetworkErrorRatio(1) > 0")
        .message
        .contains("takes 0 arguments"));
    assert!(err("ResponseCodeRatio(500, 600) > 0")
        .message
        .contains("takes 4 arguments, found 2"));
    assert!(err("ResponseCodeRatio(600, 500, 0, 600) > 0")
        .message
        .contains("empty"));
    assert!(err("ResponseCodeRatio(500.5, 600, 0, 600) > 0")
        .message
        .contains("integer"));
    assert!(err("ResponseCodeRatio(500, 600, 0, 6000) > 0")
        .message
        .contains("integer"));
    assert!(err("LatencyAtQuantileMS(0) > 1")
        .message
        .contains("out of range"));
    assert!(err("LatencyAtQuantileMS(101) > 1")
        .message
        .contains("out of range"));
    assert!(err("LatencyAtQuantileMS(1.2.3) > 1")
        .message
        .contains("not a number"));
    assert!(err("NetworkErrorRatio() > 0.5 ||")
        .message
        .contains("end of the expression"));
    assert!(err("NetworkErrorRatio() = 0.5").message.contains("=="));
    assert!(err("NetworkErrorRatio() > 0.5 #")
        .message
        .contains("unexpected character"));
    let deep = format!(
        "{}NetworkErrorRatio() > 0{}",
        "(".repeat(40),
        ")".repeat(40)
    );
    assert!(err(&deep).message.contains("nested deeper"));
    assert!(err(&"(".repeat(MAX_SOURCE_LEN + 1))
        .message
        .contains("at most"));
}

#[test]
fn error_display_reads_well() {
    assert_eq!(
        err("Latency() > 1").to_string(),
        "at column 1: unknown function \"Latency\": expected NetworkErrorRatio(), \
         ResponseCodeRatio(from, to, dividendFrom, dividendTo) or LatencyAtQuantileMS(quantile)"
    );
}

/// Fragments from which the strategy builds inputs that are often nearly valid, so the
/// parser's deeper paths are reached and not only the lexer's first error.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NetworkErrorRatio()".to_string()),
        Just("ResponseCodeRatio(500, 600, 0, 600)".to_string()),
        Just("LatencyAtQuantileMS(50.0)".to_string()),
        Just("ResponseCodeRatio(".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just(",".to_string()),
        Just("&&".to_string()),
        Just("||".to_string()),
        Just("&".to_string()),
        Just(">".to_string()),
        Just(">=".to_string()),
        Just("==".to_string()),
        Just("!=".to_string()),
        Just(" ".to_string()),
        Just("-".to_string()),
        Just("é".to_string()),
        (-1000.0f64..1000.0).prop_map(|n| n.to_string()),
        (0u32..2000).prop_map(|n| n.to_string()),
        "[A-Za-z]{1,8}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_strings_never_panic(s in "\\PC{0,200}") {
        let _ = parse(&s);
    }

    #[test]
    fn token_soup_never_panics_and_errors_point_inside(parts in prop::collection::vec(fragment(), 0..30)) {
        let s = parts.concat();
        match parse(&s) {
            Ok(e) => {
                // Whatever parsed evaluates without panicking.
                let _ = e.evaluate(&window(0.5, &[(200, 1), (500, 1)], 10.0));
            }
            Err(e) => {
                prop_assert!(e.column >= 1 && e.column <= s.chars().count() + 1, "{e} for {s:?}");
                prop_assert!(!e.message.is_empty());
            }
        }
    }

    #[test]
    fn well_formed_comparisons_always_parse(
        q in 0.01f64..100.0,
        threshold in 0.0f64..1000.0,
        op in prop::sample::select(vec![">", "<", ">=", "<=", "==", "!="]),
        join in prop::sample::select(vec!["&&", "||"]),
    ) {
        let s = format!("(LatencyAtQuantileMS({q}) {op} {threshold}) {join} NetworkErrorRatio() {op} 0.5");
        prop_assert!(parse(&s).is_ok(), "{s}");
    }
}
