//! Logging: tracing-subscriber with an env filter, human or JSON lines on stderr.
//!
//! Lines are formatted on the request's thread and written by a dedicated writer thread
//! (tracing-appender) through a buffer that is flushed whenever the queue runs dry: a worker
//! thread never blocks on a `write(2)` per access-log line, and under load many lines share one
//! syscall. The queue is not lossy: when it is full, logging waits rather than dropping lines.

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Lines queued for the writer thread before logging waits for it.
const QUEUED_LINES: usize = 64 * 1024;

/// Install the global subscriber. Keep the guard until exit: dropping it flushes what is queued.
pub fn init(level: Option<&str>, format: LogFormat) -> WorkerGuard {
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("scopegate-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.try_init(),
    };
    guard
}
