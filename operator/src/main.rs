//! `sipmba-operator`: `run` reconciles SipMba and Thing resources; `crd` prints or writes the
//! CRDs.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;

/// The SIP-MBA Kubernetes operator.
#[derive(Debug, Parser)]
#[command(name = "sipmba-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Watches SipMba and Thing resources in every namespace and reconciles them (in-cluster or
    /// with KUBECONFIG).
    Run {
        /// Where `/metrics` and `/healthz` answer.
        #[arg(long, env = "SIPMBA_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
        listen: std::net::SocketAddr,
        /// The namespace of the Lease the replicas elect their leader on (default: the
        /// client's namespace, in a pod its own).
        #[arg(long, env = "SIPMBA_OPERATOR_LEASE_NAMESPACE")]
        lease_namespace: Option<String>,
        /// The Lease's name.
        #[arg(long, env = "SIPMBA_OPERATOR_LEASE", default_value = "sipmba-operator")]
        lease: String,
        /// How long the leader's term lasts without a renewal, in seconds: a standby takes
        /// over at most this long after the leader stops renewing.
        #[arg(long, env = "SIPMBA_OPERATOR_LEASE_SECONDS", default_value_t = 15,
              value_parser = clap::value_parser!(u64).range(3..=300))]
        lease_seconds: u64,
        /// How many Things are reconciled at once (1-1000). Each holds a slot until its
        /// reconcile ends (a call to an agent that does not answer, 10 s), so the bound caps
        /// both the operator's memory when a fleet wakes together (after a restart, one
        /// `kubectl apply` of many Things) and the load it puts on the API server and sso.
        #[arg(long, env = "SIPMBA_OPERATOR_THING_CONCURRENCY", default_value_t = 64,
              value_parser = clap::value_parser!(u16).range(1..=1000))]
        thing_concurrency: u16,
        /// This replica's identity in the Lease (default: the pod's name from POD_NAME, else
        /// the host name and process id).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
    },
    /// Prints the CRDs as YAML, or writes them to a directory, or checks a directory holds them.
    Crd {
        /// Write one file per CRD into this directory.
        #[arg(long, conflicts_with = "check")]
        out: Option<PathBuf>,
        /// Exit 1 when the files of this directory differ from what the types generate.
        #[arg(long)]
        check: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let (out, check) = match Cli::parse().command {
        Command::Run {
            listen,
            lease_namespace,
            lease,
            lease_seconds,
            thing_concurrency,
            identity,
        } => {
            let election = sipmba_operator::leader::Election {
                namespace: lease_namespace,
                lease,
                identity: identity.unwrap_or_else(default_identity),
                lease_seconds,
            };
            return run(listen, election, thing_concurrency);
        }
        Command::Crd { out, check } => (out, check),
    };
    let result = match (out, check) {
        (Some(dir), _) => sipmba_operator::crdgen::write(&dir),
        (None, Some(dir)) => match sipmba_operator::crdgen::stale(&dir) {
            Ok(stale) if stale.is_empty() => Ok(()),
            Ok(stale) => {
                eprintln!(
                    "error: {} differ from the CRD types: run `cargo run -p sipmba-operator -- crd --out {}`",
                    stale.join(", "),
                    dir.display()
                );
                return ExitCode::FAILURE;
            }
            Err(e) => Err(e),
        },
        (None, None) => sipmba_operator::crdgen::manifests()
            .map(|all| {
                for (_, yaml) in all {
                    println!("---\n{yaml}");
                }
            })
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The host's name and this process's id: unique among replicas outside a pod.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "sipmba-operator".to_owned());
    format!("{host}-{}", std::process::id())
}

fn run(
    listen: std::net::SocketAddr,
    election: sipmba_operator::leader::Election,
    thing_concurrency: u16,
) -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sipmba_operator::run(listen, election, thing_concurrency)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
