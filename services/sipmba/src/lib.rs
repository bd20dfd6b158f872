//! The `sipmba` binary's parts: the server wiring ([`server`]: one `start_<service>` step per
//! micro-service, validated before and served after), `sipmba server --dev` on top of it
//! ([`dev`]), the embedded web console ([`console`]), and the command-line tool for a running
//! platform ([`cli`]).

pub mod cli;
pub mod config;
pub mod console;
pub mod dev;
mod dev_broker;
mod local_io;
pub mod server;
