//! Structured logging: JSON lines when stderr is not a TTY (or with `--log-format json`),
//! human-readable text otherwise. `-v` raises the level (info → debug → trace); `RUST_LOG`
//! overrides everything.

use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

use crate::cli::LogFormat;

/// Sets up the global subscriber and returns the format chosen.
pub fn init(format: Option<LogFormat>, verbose: u8) -> LogFormat {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_target(false)
            .try_init(),
        LogFormat::Text => builder.with_target(false).compact().try_init(),
    };
    format
}
