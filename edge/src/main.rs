//! The `sipmba-edge` command.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use sipmba_edge::{
    agent::{Agent, Outputs},
    config::Config,
};
use sipmba_proto::v1 as pb;

#[derive(Parser)]
#[command(name = "sipmba-edge", version, about = "The SIP-MBA edge agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the agent: samples, uploads at every wake, runs commands.
    Run {
        /// The configuration file.
        #[arg(
            long,
            env = "SIPMBA_EDGE_CONFIG",
            default_value = "/etc/sipmba-edge/config.toml"
        )]
        config: PathBuf,
    },
    /// Checks a configuration file and says what it sets up.
    CheckConfig {
        /// The configuration file.
        #[arg(
            long,
            env = "SIPMBA_EDGE_CONFIG",
            default_value = "/etc/sipmba-edge/config.toml"
        )]
        config: PathBuf,
    },
    /// Provisions the agent by hand (without the operator): its thing, token and Collect address.
    Provision {
        /// The configuration file (for `state_dir`).
        #[arg(
            long,
            env = "SIPMBA_EDGE_CONFIG",
            default_value = "/etc/sipmba-edge/config.toml"
        )]
        config: PathBuf,
        /// The thing's id.
        #[arg(long)]
        thing: String,
        /// A file holding the thing's access token.
        #[arg(long)]
        token_file: PathBuf,
        /// Collect's URL, e.g. https://collect.example.net:443.
        #[arg(long)]
        collect: String,
        /// A PEM file of the CA that signed Collect's certificate (required for https).
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("sipmba-edge: {e} (in {})", path.display());
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::CheckConfig { config } => match load(&config) {
            Ok(c) => {
                println!(
                    "ok: {} sensor(s), {} output(s), sampling every {} s, uploading every {} s, outbox of at most {} readings in {}",
                    c.sensors.len(),
                    c.outputs.len(),
                    c.sample_interval.as_secs(),
                    c.upload_interval.as_secs(),
                    c.outbox_max_readings,
                    c.state_dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Provision {
            config,
            thing,
            token_file,
            collect,
            ca_file,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).map_err(|e| {
                    eprintln!("sipmba-edge: cannot read {}: {e}", p.display());
                    ExitCode::from(2)
                })
            };
            let token = match read(&token_file) {
                Ok(t) => t.trim().to_owned(),
                Err(code) => return code,
            };
            let ca = match ca_file.as_ref().map(read).transpose() {
                Ok(ca) => ca,
                Err(code) => return code,
            };
            let store = match sipmba_edge::credentials::CredentialStore::open(&config.state_dir) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("sipmba-edge: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match store.replace(pb::ProvisionRequest {
                thing: Some(pb::ThingId { value: thing }),
                access_token: token,
                collect_endpoint: collect,
                ca_certificate_pem: ca,
                ..Default::default()
            }) {
                Ok(changed) => {
                    println!(
                        "{}",
                        if changed {
                            "provisioned"
                        } else {
                            "already provisioned with these credentials"
                        }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sipmba-edge: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("sipmba-edge: cannot start: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(config))
        }
    }
}

/// Starts the provisioning endpoint; errors name what to fix.
async fn start_provisioning(
    agent: &Agent,
    p: &sipmba_edge::config::ProvisioningConfig,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let tls = match &p.tls {
        None => None,
        Some((cert, key)) => {
            let read = |f: &PathBuf, key: &str| {
                std::fs::read_to_string(f).map_err(|e| {
                    format!("invalid setting `{key}`: cannot read {}: {e}", f.display())
                })
            };
            Some((
                read(cert, "provisioning.tls_cert_file")?,
                read(key, "provisioning.tls_key_file")?,
            ))
        }
    };
    let provisioning = sipmba_edge::provision::Provisioning::new(
        agent.clone(),
        &p.enrollment_secret_file,
        tls.is_some(),
    )
    .map_err(|e| format!("invalid setting `provisioning.enrollment_secret_file`: {e}"))?;
    let listener = tokio::net::TcpListener::bind(p.listen).await.map_err(|e| {
        format!(
            "invalid setting `provisioning.listen`: cannot listen on {}: {e}",
            p.listen
        )
    })?;
    tracing::info!(addr = %p.listen, tls = tls.is_some(), "provisioning endpoint listening");
    Ok(tokio::spawn(async move {
        if let Err(e) = sipmba_edge::provision::serve(provisioning, listener, tls).await {
            tracing::error!(error = %e, "the provisioning endpoint stopped");
        }
    }))
}

async fn run(config: Config) -> ExitCode {
    let outputs = Outputs::open(&config);
    let agent = match Agent::open(config.clone(), outputs) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sipmba-edge: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        version = sipmba_edge::agent::VERSION,
        outbox = agent.outbox.depth().unwrap_or(0),
        "sipmba-edge started"
    );
    let provisioning = match &config.provisioning {
        None => None,
        Some(p) => match start_provisioning(&agent, p).await {
            Ok(task) => Some(task),
            Err(e) => {
                eprintln!("sipmba-edge: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let sampler = tokio::spawn(agent.clone().sampler());
    let uploader = tokio::spawn(agent.clone().uploader());
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sipmba-edge: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Everything accepted is on disk already: stopping loses nothing.
    sampler.abort();
    uploader.abort();
    if let Some(p) = provisioning {
        p.abort();
    }
    tracing::info!(
        outbox = agent.outbox.depth().unwrap_or(0),
        "sipmba-edge stopped"
    );
    ExitCode::SUCCESS
}
