//! What tracing does, resolved once at start from the flags and the standard `OTEL_*`
//! environment variables (flags first, then the signal-specific variable, then the general one).

use std::time::Duration;

use crate::config::{Config, OtlpProtocol};

/// Longest environment value quoted in an error or warning.
const QUOTE_MAX: usize = 120;

/// Default of `OTEL_BSP_MAX_QUEUE_SIZE`.
pub const DEFAULT_QUEUE_SIZE: usize = 2048;
/// Default of `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.
pub const DEFAULT_BATCH_SIZE: usize = 512;
/// Default of `OTEL_BSP_SCHEDULE_DELAY`.
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_secs(5);
/// Default of `OTEL_BSP_EXPORT_TIMEOUT`.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest queue accepted from `OTEL_BSP_MAX_QUEUE_SIZE` (the flag has the same bound).
const MAX_QUEUE_SIZE: usize = 1_000_000;

/// A tracing setting that cannot be used: the proxy refuses to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The collector endpoint is not an `http://` URL.
    #[error("{source_name} {value:?}: {reason}")]
    Endpoint {
        /// The flag or variable that gave it.
        source_name: &'static str,
        /// Its value (cut to a bounded length).
        value: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

/// How the root of a new trace, and a span with a parent, are sampled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSpec {
    /// Every span (the parent's decision is ignored).
    AlwaysOn,
    /// No span.
    AlwaysOff,
    /// This share of trace ids (the parent's decision is ignored).
    Ratio(f64),
    /// A span with a parent follows the parent's decision; a new trace is sampled by `root`.
    ParentBased(Root),
}

/// The root sampler of [`SamplerSpec::ParentBased`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    /// Every new trace.
    AlwaysOn,
    /// No new trace.
    AlwaysOff,
    /// This share of new traces (by trace id).
    Ratio(f64),
}

/// Everything tracing needs; `None` from [`resolve`] means tracing is off.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// Full URL spans are sent to (with `/v1/traces` for HTTP).
    pub endpoint: String,
    /// OTLP wire protocol.
    pub protocol: OtlpProtocol,
    /// Sampling.
    pub sampler: SamplerSpec,
    /// Finished spans waiting for export at most.
    pub queue_size: usize,
    /// Spans per export request at most.
    pub batch_size: usize,
    /// Longest wait before queued spans are sent.
    pub batch_delay: Duration,
    /// Longest time one export may take before its spans are given up.
    pub export_timeout: Duration,
}

/// The tracing settings of `config`, with `env` giving the environment; `Ok(None)` when no
/// endpoint is set, `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. Unusable
/// `OTEL_*` values other than the endpoint are replaced by their default, as the
/// OpenTelemetry specification asks, and reported in `warnings`.
pub fn resolve(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Option<TraceSettings>, Error> {
    let var = |name: &str| {
        env(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match var("OTEL_TRACES_EXPORTER").as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => warnings.push(format!(
            "OTEL_TRACES_EXPORTER {:?}: only otlp (or none) is supported; using otlp",
            cut(other)
        )),
    }
    let protocol = match config.otlp_protocol {
        Some(p) => p,
        None => protocol_from_env(&var, warnings),
    };
    // The flag and OTEL_EXPORTER_OTLP_ENDPOINT are base URLs (the HTTP path is appended);
    // the signal-specific variable is the full URL, as the specification has it.
    let endpoint = if let Some(v) = config.otlp_endpoint.as_deref().filter(|v| !v.is_empty()) {
        signal_url("--otlp-endpoint", v, protocol)?
    } else if let Some(v) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        check_http("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &v)?;
        v
    } else if let Some(v) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        signal_url("OTEL_EXPORTER_OTLP_ENDPOINT", &v, protocol)?
    } else {
        return Ok(None);
    };
    let sampler = match config.trace_sampling_ratio {
        Some(r) => SamplerSpec::ParentBased(Root::Ratio(r)),
        None => sampler_from_env(&var, warnings),
    };
    let queue_size = match config.trace_queue_size {
        Some(n) => n as usize,
        None => number(
            &var,
            "OTEL_BSP_MAX_QUEUE_SIZE",
            DEFAULT_QUEUE_SIZE,
            warnings,
        )
        .min(MAX_QUEUE_SIZE),
    };
    let batch_size = number(
        &var,
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        DEFAULT_BATCH_SIZE,
        warnings,
    )
    .min(queue_size);
    let batch_delay = match config.trace_batch_delay {
        Some(d) => d,
        None => Duration::from_millis(number(
            &var,
            "OTEL_BSP_SCHEDULE_DELAY",
            DEFAULT_BATCH_DELAY.as_millis() as usize,
            warnings,
        ) as u64),
    };
    let export_timeout = Duration::from_millis(number(
        &var,
        "OTEL_BSP_EXPORT_TIMEOUT",
        DEFAULT_EXPORT_TIMEOUT.as_millis() as usize,
        warnings,
    ) as u64);
    Ok(Some(TraceSettings {
        endpoint,
        protocol,
        sampler,
        queue_size,
        batch_size,
        batch_delay,
        export_timeout,
    }))
}

fn protocol_from_env(
    var: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> OtlpProtocol {
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        match var(name).as_deref() {
            None => continue,
            Some("http/protobuf") => return OtlpProtocol::HttpProtobuf,
            Some("grpc") => return OtlpProtocol::Grpc,
            Some(other) => {
                warnings.push(format!(
                    "{name} {:?}: expected http/protobuf or grpc; using http/protobuf",
                    cut(other)
                ));
                return OtlpProtocol::HttpProtobuf;
            }
        }
    }
    OtlpProtocol::HttpProtobuf
}

/// The sampler of `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`; the specification's
/// default (`parentbased_always_on`) when unset or unusable.
fn sampler_from_env(
    var: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> SamplerSpec {
    let default = SamplerSpec::ParentBased(Root::AlwaysOn);
    let Some(name) = var("OTEL_TRACES_SAMPLER") else {
        return default;
    };
    let mut ratio = || {
        let arg = var("OTEL_TRACES_SAMPLER_ARG");
        match arg.as_deref().map(str::parse::<f64>) {
            Some(Ok(r)) if (0.0..=1.0).contains(&r) => r,
            None => 1.0,
            Some(_) => {
                warnings.push(format!(
                    "OTEL_TRACES_SAMPLER_ARG {:?}: expected a number from 0 to 1; using 1",
                    cut(arg.as_deref().unwrap_or(""))
                ));
                1.0
            }
        }
    };
    match name.as_str() {
        "always_on" => SamplerSpec::AlwaysOn,
        "always_off" => SamplerSpec::AlwaysOff,
        "traceidratio" => SamplerSpec::Ratio(ratio()),
        "parentbased_always_on" => SamplerSpec::ParentBased(Root::AlwaysOn),
        "parentbased_always_off" => SamplerSpec::ParentBased(Root::AlwaysOff),
        "parentbased_traceidratio" => SamplerSpec::ParentBased(Root::Ratio(ratio())),
        other => {
            warnings.push(format!(
                "OTEL_TRACES_SAMPLER {:?}: expected always_on, always_off, traceidratio, \
                 parentbased_always_on, parentbased_always_off or parentbased_traceidratio; \
                 using parentbased_always_on",
                cut(other)
            ));
            default
        }
    }
}

/// A positive integer variable, or `default` (with a warning when it is set but unusable).
fn number(
    var: &dyn Fn(&str) -> Option<String>,
    name: &str,
    default: usize,
    warnings: &mut Vec<String>,
) -> usize {
    match var(name) {
        None => default,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                warnings.push(format!(
                    "{name} {:?}: expected a whole number above 0; using {default}",
                    cut(&v)
                ));
                default
            }
        },
    }
}

/// The traces URL of a base endpoint: `/v1/traces` appended for HTTP unless already there.
fn signal_url(
    source_name: &'static str,
    base: &str,
    protocol: OtlpProtocol,
) -> Result<String, Error> {
    let base = base.trim();
    check_http(source_name, base)?;
    Ok(match protocol {
        OtlpProtocol::Grpc => base.to_string(),
        OtlpProtocol::HttpProtobuf if base.trim_end_matches('/').ends_with("/v1/traces") => {
            base.to_string()
        }
        OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
    })
}

/// Spans go to a collector over plain HTTP (a node-local or in-cluster collector); the proxy
/// carries no TLS client for them.
fn check_http(source_name: &'static str, value: &str) -> Result<(), Error> {
    let err = |reason: &str| Error::Endpoint {
        source_name,
        value: cut(value),
        reason: reason.to_string(),
    };
    let uri: http::Uri = value
        .parse()
        .map_err(|_| err("not a URL; expected e.g. http://otel-collector:4318"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http"), Some(h)) if !h.is_empty() => Ok(()),
        (Some("https"), _) => Err(err(
            "https is not supported; send to a collector over http:// (e.g. one on the node)",
        )),
        _ => Err(err(
            "expected an http:// URL with a host, e.g. http://otel-collector:4318",
        )),
    }
}

/// `value` cut to a bounded length for messages.
fn cut(value: &str) -> String {
    match value.char_indices().nth(QUOTE_MAX) {
        Some((i, _)) => format!("{}...", &value[..i]),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve_with(
        config: &Config,
        vars: &[(&str, &str)],
    ) -> (Option<TraceSettings>, Vec<String>) {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut warnings = Vec::new();
        let s = resolve(config, &|k| map.get(k).cloned(), &mut warnings).unwrap();
        (s, warnings)
    }

    fn with_endpoint(e: &str) -> Config {
        Config {
            otlp_endpoint: Some(e.into()),
            ..Config::default()
        }
    }

    #[test]
    fn off_without_endpoint_or_when_disabled() {
        assert_eq!(resolve_with(&Config::default(), &[]).0, None);
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
        assert!(resolve_with(&Config::default(), &on).0.is_some());
        let off = [on[0], ("OTEL_SDK_DISABLED", "true")];
        assert_eq!(resolve_with(&Config::default(), &off).0, None);
        let off = [on[0], ("OTEL_TRACES_EXPORTER", "none")];
        assert_eq!(resolve_with(&Config::default(), &off).0, None);
        assert_eq!(
            resolve_with(&with_endpoint("http://c:4318"), &off[1..]).0,
            None
        );
    }

    #[test]
    fn endpoint_precedence_and_paths() {
        let s = resolve_with(&with_endpoint("http://c:4318"), &[])
            .0
            .unwrap();
        assert_eq!(s.endpoint, "http://c:4318/v1/traces");
        assert_eq!(s.protocol, OtlpProtocol::HttpProtobuf);
        let s = resolve_with(&with_endpoint("http://c:4318/v1/traces"), &[])
            .0
            .unwrap();
        assert_eq!(s.endpoint, "http://c:4318/v1/traces");
        // The flag wins over both variables.
        let vars = [
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318/custom"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://g:4318/"),
        ];
        let s = resolve_with(&with_endpoint("http://flag:4318"), &vars)
            .0
            .unwrap();
        assert_eq!(s.endpoint, "http://flag:4318/v1/traces");
        // The signal-specific variable is taken as it is, and wins over the general one.
        let s = resolve_with(&Config::default(), &vars).0.unwrap();
        assert_eq!(s.endpoint, "http://t:4318/custom");
        let s = resolve_with(&Config::default(), &vars[1..]).0.unwrap();
        assert_eq!(s.endpoint, "http://g:4318/v1/traces");
        // gRPC endpoints are used as they are.
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://g:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        let s = resolve_with(&Config::default(), &vars).0.unwrap();
        assert_eq!(
            (s.endpoint.as_str(), s.protocol),
            ("http://g:4317", OtlpProtocol::Grpc)
        );
        let c = Config {
            otlp_protocol: Some(OtlpProtocol::HttpProtobuf),
            ..Config::default()
        };
        let s = resolve_with(&c, &vars).0.unwrap();
        assert_eq!(s.endpoint, "http://g:4317/v1/traces");
    }

    #[test]
    fn unusable_endpoints_are_refused_by_name() {
        let mut w = Vec::new();
        let e = resolve(&with_endpoint("https://c:4318"), &|_| None, &mut w).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--otlp-endpoint \"https://c:4318\": https"),
            "{e}"
        );
        let e = resolve(
            &Config::default(),
            &|k| (k == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").then(|| "c:4318 x".to_string()),
            &mut w,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \"c:4318 x\""),
            "{e}"
        );
        let long = format!("ftp://{}", "x".repeat(10_000));
        let e = resolve(&with_endpoint(&long), &|_| None, &mut w).unwrap_err();
        assert!(e.to_string().len() < 400, "value is cut: {e}");
    }

    #[test]
    fn samplers_from_flag_and_environment() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let sampler = |vars: &[(&str, &str)]| {
            let mut all = vec![on];
            all.extend_from_slice(vars);
            resolve_with(&Config::default(), &all)
        };
        assert_eq!(
            sampler(&[]).0.unwrap().sampler,
            SamplerSpec::ParentBased(Root::AlwaysOn)
        );
        let (s, w) = sampler(&[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
        ]);
        assert_eq!(
            s.unwrap().sampler,
            SamplerSpec::ParentBased(Root::Ratio(0.01))
        );
        assert!(w.is_empty());
        let (s, _) = sampler(&[("OTEL_TRACES_SAMPLER", "always_off")]);
        assert_eq!(s.unwrap().sampler, SamplerSpec::AlwaysOff);
        let (s, w) = sampler(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]);
        assert_eq!(s.unwrap().sampler, SamplerSpec::Ratio(1.0));
        assert!(w[0].starts_with("OTEL_TRACES_SAMPLER_ARG \"2\""), "{w:?}");
        let (s, w) = sampler(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]);
        assert_eq!(s.unwrap().sampler, SamplerSpec::ParentBased(Root::AlwaysOn));
        assert!(w[0].contains("\"jaeger_remote\""), "{w:?}");
        // The flag wins.
        let c = Config {
            trace_sampling_ratio: Some(0.25),
            ..Config::default()
        };
        let s = resolve_with(&c, &[on, ("OTEL_TRACES_SAMPLER", "always_on")])
            .0
            .unwrap();
        assert_eq!(s.sampler, SamplerSpec::ParentBased(Root::Ratio(0.25)));
    }

    #[test]
    fn queue_and_batch_bounds() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let (s, w) = resolve_with(&Config::default(), &[on]);
        let s = s.unwrap();
        assert_eq!(
            (s.queue_size, s.batch_size),
            (DEFAULT_QUEUE_SIZE, DEFAULT_BATCH_SIZE)
        );
        assert_eq!(s.batch_delay, DEFAULT_BATCH_DELAY);
        assert!(w.is_empty());
        let (s, w) = resolve_with(
            &Config::default(),
            &[
                on,
                ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "500"),
                ("OTEL_BSP_SCHEDULE_DELAY", "250"),
                ("OTEL_BSP_EXPORT_TIMEOUT", "-1"),
            ],
        );
        let s = s.unwrap();
        assert_eq!(
            (s.queue_size, s.batch_size),
            (100, 100),
            "a batch fits in the queue"
        );
        assert_eq!(s.batch_delay, Duration::from_millis(250));
        assert_eq!(s.export_timeout, DEFAULT_EXPORT_TIMEOUT);
        assert!(w[0].starts_with("OTEL_BSP_EXPORT_TIMEOUT \"-1\""), "{w:?}");
        let c = Config {
            trace_queue_size: Some(7),
            trace_batch_delay: Some(Duration::from_millis(20)),
            ..Config::default()
        };
        let s = resolve_with(&c, &[on, ("OTEL_BSP_MAX_QUEUE_SIZE", "100")])
            .0
            .unwrap();
        assert_eq!(
            (s.queue_size, s.batch_size, s.batch_delay),
            (7, 7, Duration::from_millis(20))
        );
        let s = resolve_with(
            &Config::default(),
            &[on, ("OTEL_BSP_MAX_QUEUE_SIZE", "99999999999")],
        );
        assert_eq!(s.0.unwrap().queue_size, MAX_QUEUE_SIZE);
    }
}
