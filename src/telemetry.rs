//! Logs through `tracing`, written to stderr: readable lines (coloured only on a
//! terminal) or one JSON object per line (`log.format = "json"`), at a level that SIGHUP
//! can change.
//!
//! What is logged never holds a secret: requests are logged by route pattern (never the
//! raw path, which can hold an ERP key), problem type (never the problem's detail, which
//! can echo the request body), ids and sizes. `tests/log_secrecy.rs` checks it.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry, fmt, reload};

use crate::config::{LogFormat, LogLevel};

/// The target of the one line logged per request.
pub const REQUEST_TARGET: &str = "coffer::request";

static LEVEL: OnceLock<reload::Handle<LevelFilter, Registry>> = OnceLock::new();

fn filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
    }
}

/// Installs the process's log subscriber. Only the first call takes effect (a later one,
/// e.g. `serve` after the command-line default, changes the level only), so it returns
/// whether this call installed it.
pub fn init(format: LogFormat, level: LogLevel) -> bool {
    let (level_layer, handle) = reload::Layer::new(filter(level));
    let output = match format {
        LogFormat::Human => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(level_layer)
        .with(output)
        .try_init()
        .is_ok();
    if installed {
        let _ = LEVEL.set(handle);
    } else {
        set_level(level);
    }
    installed
}

/// Logs of an admin command: warnings and errors on stderr, as `WARN message` lines
/// without time or target.
pub fn init_cli() {
    let output = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(LevelFilter::WARN)
        .with(output)
        .try_init();
}

/// Changes the level of the installed subscriber (SIGHUP).
pub fn set_level(level: LogLevel) {
    if let Some(handle) = LEVEL.get()
        && let Err(e) = handle.modify(|f| *f = filter(level))
    {
        tracing::warn!("cannot change the log level: {e}");
    }
}
