//! What every SIP-MBA server process needs: configuration, database connections, the error
//! mapping to gRPC statuses, request-field parsing, metrics, and the server with health,
//! reflection, TLS and graceful shutdown.

pub mod browser;
pub mod clock;
pub mod config;
pub mod db;
mod error;
pub mod ids;
pub mod metrics;
pub mod objects;
pub mod prune;
pub mod ratelimit;
pub mod retry;
pub mod server;
mod shutdown;
pub mod tls;

pub use clock::Clock;
pub use config::{
    AuthConfig, Config, ConfigArgs, ConfigError, Defaults, LogFormat, QueueSettings, Sections,
    ServiceIdentity, TlsFiles,
};
pub use error::{ServiceError, ServiceResult, exhausted};
pub use server::{Probe, ServeError, Server};
pub use shutdown::{Shutdown, ShutdownTrigger, termination_signal};

/// Installs the tracing subscriber: `RUST_LOG` filters (default `info`), text or JSON lines, on
/// standard output (standard error under `--dev`).
pub fn init_tracing(format: LogFormat, dev: bool) {
    use tracing_subscriber::{EnvFilter, fmt};
    // Our crates (`sipmba*` targets) at info, dependencies (the Kafka client, hyper, sqlx) at
    // warn, unless RUST_LOG asks otherwise. `--dev` keeps standard output for what it prints for
    // people, and its demo agent quiet.
    let default = if dev {
        "warn,sipmba=info,sipmba_edge=warn"
    } else {
        "warn,sipmba=info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = fmt().with_env_filter(filter).with_target(true);
    let _ = match (format, dev) {
        (LogFormat::Json, false) => builder.json().flatten_event(true).try_init(),
        (LogFormat::Json, true) => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .try_init(),
        (LogFormat::Text, false) => builder.try_init(),
        (LogFormat::Text, true) => builder.with_writer(std::io::stderr).try_init(),
    };
}
