//! The one Prometheus-text query of the tests: a selector like `name{k="v",...}` summed over the
//! samples of `name` whose labels include every pair given.

/// Sum of the samples of `selector` in `text` (the Prometheus text exposition), 0 when none.
///
/// `selector` is a metric name, optionally followed by `{k="v",...}`; a sample matches when it
/// is of exactly that name and carries every label pair given (others may follow). Comment
/// lines and other metrics (`name_bucket` for `name`) never match.
pub fn metric_in(text: &str, selector: &str) -> f64 {
    let (name, wanted) = split_series(selector);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, labels) = split_series(series);
            (n == name && wanted.iter().all(|w| labels.contains(w)))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// [`metric_in`] with the selector built from a name and label pairs.
pub fn metric_with(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    metric_in(text, &format!("{name}{{{}}}", pairs.join(",")))
}

/// [`metric_with`] on this process's default registry (what `/metrics` serves).
pub fn metric(name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .expect("encode the default registry");
    metric_with(&text, name, labels)
}

/// `name{a="1",b="2"}` → (`name`, [`a="1"`, `b="2"`]). Label values in this crate's metrics
/// hold no comma, so splitting on it is exact here.
fn split_series(series: &str) -> (&str, Vec<&str>) {
    match series.split_once('{') {
        Some((name, rest)) => {
            let inner = rest.trim_end_matches('}');
            (name, inner.split(',').filter(|p| !p.is_empty()).collect())
        }
        None => (series, Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP x_total X.
# TYPE x_total counter
x_total{namespace=\"a\",service=\"s\",code=\"200\"} 3
x_total{namespace=\"a\",service=\"s\",code=\"502\"} 1
x_total{namespace=\"b\",service=\"s\",code=\"200\"} 7
x_total_other 100
y 2.5
";

    #[test]
    fn sums_the_samples_whose_labels_include_the_selector() {
        assert_eq!(metric_in(TEXT, "x_total"), 11.0);
        assert_eq!(metric_in(TEXT, "x_total{namespace=\"a\"}"), 4.0);
        assert_eq!(
            metric_in(TEXT, "x_total{code=\"502\",namespace=\"a\"}"),
            1.0
        );
        assert_eq!(metric_with(TEXT, "x_total", &[("namespace", "b")]), 7.0);
        assert_eq!(metric_in(TEXT, "y"), 2.5);
    }

    #[test]
    fn absent_series_and_other_names_count_zero() {
        assert_eq!(metric_in(TEXT, "x_total{namespace=\"c\"}"), 0.0);
        assert_eq!(metric_in(TEXT, "x"), 0.0);
        assert_eq!(metric_in(TEXT, "HELP"), 0.0);
    }
}
