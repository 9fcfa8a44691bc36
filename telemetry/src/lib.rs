//! What both binaries share to report on themselves: the `--log` and `--log-format` flags and
//! the one logging set-up (`tracing` to stderr, text or JSON lines, `log` records bridged in).
//!
//! Both binaries flatten [`LogArgs`] into their flags and call [`LogArgs::init`] first thing,
//! so a filter means the same in both and a bad one stops either with an error naming where it
//! came from and the value.

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, the event's fields at the top level.
    Json,
}

/// The log flags of both binaries (`#[command(flatten)]`; global, so subcommands take them too).
#[derive(Clone, Debug, Default, PartialEq, Eq, Args)]
pub struct LogArgs {
    /// Log filter, `RUST_LOG` syntax (e.g. `info` or `info,maille_proxy=debug`). Without it,
    /// `RUST_LOG`, then `info`. A filter that does not parse stops the start with an error
    /// naming it.
    #[arg(long, env = "MAILLE_LOG", value_name = "FILTER", value_parser = parse_filter, global = true)]
    pub log: Option<String>,
    /// Log line format: `text` (human-readable) or `json` (one object per line).
    #[arg(long, env = "MAILLE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filter that does not parse.
    #[error(
        "{origin} {value:?}: {reason}; expected a filter such as info or info,maille_proxy=debug"
    )]
    Filter {
        /// Where it came from: `--log (MAILLE_LOG)` or `RUST_LOG`.
        origin: &'static str,
        /// The filter given.
        value: String,
        /// What the parser said.
        reason: String,
    },
    /// A global subscriber was installed already.
    #[error("installing the logger: {0}")]
    Install(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `--log` value parser: a filter `EnvFilter` accepts. clap's error names the flag and the
/// value; this says what is wrong with it.
pub fn parse_filter(s: &str) -> std::result::Result<String, String> {
    EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{e}; expected a filter such as info or info,maille_proxy=debug"))
}

impl LogArgs {
    /// The filter in force: `--log`, else `RUST_LOG`, else `info`.
    pub fn filter(&self) -> Result<EnvFilter> {
        filter_from(self.log.as_deref(), std::env::var("RUST_LOG").ok())
    }

    /// Installs the global subscriber: the filter of [`LogArgs::filter`], lines to stderr in
    /// the chosen format. `try_init` also installs the `log` → `tracing` bridge, which carries
    /// Pingora's own records.
    pub fn init(&self) -> Result<()> {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(self.filter()?)
            .with_writer(std::io::stderr);
        let installed = match self.log_format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
        };
        installed.map_err(|e| Error::Install(e.to_string()))
    }
}

fn filter_from(log: Option<&str>, rust_log: Option<String>) -> Result<EnvFilter> {
    let (origin, value) = match (log, rust_log) {
        (Some(f), _) => ("--log (MAILLE_LOG)", f.to_string()),
        (None, Some(env)) if !env.trim().is_empty() => ("RUST_LOG", env),
        (None, _) => return Ok(EnvFilter::new("info")),
    };
    EnvFilter::try_new(&value).map_err(|e| Error::Filter {
        origin,
        reason: e.to_string(),
        value,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        logging: LogArgs,
    }

    #[test]
    fn a_bad_log_flag_is_refused_naming_the_flag_and_value() {
        let e = Flags::try_parse_from(["bin", "--log", "maille_proxy=loud"]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("--log") && msg.contains("maille_proxy=loud"),
            "{msg}"
        );
        let ok = Flags::try_parse_from(["bin", "--log", "info,maille_proxy=debug"]).unwrap();
        assert_eq!(ok.logging.log.as_deref(), Some("info,maille_proxy=debug"));
        assert_eq!(ok.logging.log_format, LogFormat::Text);
        let json = Flags::try_parse_from(["bin", "--log-format", "json"]).unwrap();
        assert_eq!(json.logging.log_format, LogFormat::Json);
        assert!(Flags::try_parse_from(["bin", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn the_flag_wins_over_rust_log_then_info() {
        let shown = |f: Result<EnvFilter>| f.unwrap().to_string();
        assert_eq!(
            shown(filter_from(Some("debug"), Some("warn".into()))),
            "debug"
        );
        assert_eq!(shown(filter_from(None, Some("warn".into()))), "warn");
        assert_eq!(shown(filter_from(None, Some(" ".into()))), "info");
        assert_eq!(shown(filter_from(None, None)), "info");
    }

    #[test]
    fn a_bad_rust_log_is_an_error_naming_it() {
        let e = filter_from(None, Some("x=loud".into())).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("RUST_LOG \"x=loud\": "), "{msg}");
        // Also when the filter comes from code rather than the flag parser.
        let e = filter_from(Some("y=loud"), None).unwrap_err();
        assert!(
            e.to_string().starts_with("--log (MAILLE_LOG) \"y=loud\""),
            "{e}"
        );
    }
}
