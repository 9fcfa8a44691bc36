//! Log set-up: `tracing` to stderr (text or JSON), with Pingora's `log` records bridged in.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `filter` uses `EnvFilter` syntax; the binary's flag parser
/// has refused an invalid one already, so only a `Config` built in code can reach the
/// fallback to `info` (with a warning).
pub fn init(filter: &str, format: LogFormat) {
    let (env_filter, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    // `try_init` also installs the `log` → `tracing` bridge (tracing-log), which carries
    // Pingora's own log records.
    let res = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(e) = res {
        eprintln!("maille-proxy: logging already initialised: {e}");
    }
    if let Some(e) = bad {
        tracing::warn!(filter, error = %e, "Invalid --log filter; using info");
    }
}
