//! One full cycle of the edge agent against a real platform: `sipmba server --dev` is started,
//! a user registers, creates a thing and gets its token; the agent (a `sipmba-edge` binary,
//! natively or under an emulator such as `qemu-aarch64`) is started and provisioned through its
//! provisioning endpoint; it samples, wakes, uploads, takes a command waiting for it, runs it,
//! acknowledges it and sleeps. The run passes when Processing holds the thing's readings, the
//! command is ACKED, and the agent stops cleanly on SIGTERM.
//!
//! Run (what `.ci/edge-qemu` does for aarch64):
//! `cargo run -p sipmba-e2e --bin edge-cycle -- --server target/debug/sipmba --agent <sipmba-edge>
//! [--emulator qemu-aarch64 --sysroot /usr/aarch64-linux-gnu]`
#![allow(clippy::unwrap_used, clippy::expect_used)] // an end-to-end run fails loudly

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use sipmba_proto::v1 as pb;
use sipmba_testkit::with_token;
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[derive(Parser, Debug)]
struct Args {
    /// The `sipmba` server binary.
    #[arg(long)]
    server: PathBuf,
    /// The `sipmba-edge` binary to run.
    #[arg(long)]
    agent: PathBuf,
    /// Runs the agent through this emulator (e.g. `qemu-aarch64`).
    #[arg(long)]
    emulator: Option<String>,
    /// The emulator's sysroot (`-L`), e.g. `/usr/aarch64-linux-gnu`.
    #[arg(long)]
    sysroot: Option<PathBuf>,
    /// Gives up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn sigterm(mut child: Child, what: &str) -> anyhow::Result<()> {
    let pid = child.id().context("not running")?;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .with_context(|| format!("{what} did not stop within 30 s of SIGTERM"))??;
    if !status.success() {
        bail!("{what} exited with {status} after SIGTERM");
    }
    Ok(())
}

async fn serving(channel: &Channel, service: &str, deadline: Instant) -> anyhow::Result<()> {
    loop {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status);
        if status
            .as_ref()
            .is_ok_and(|s| *s == ServingStatus::Serving as i32)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{service} is not serving: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn token(
    channel: &Channel,
    grant: pb::token_request::Grant,
) -> anyhow::Result<pb::TokenResponse> {
    Ok(
        pb::token_service_client::TokenServiceClient::new(channel.clone())
            .token(pb::TokenRequest { grant: Some(grant) })
            .await?
            .into_inner(),
    )
}

fn agent_command(args: &Args, config: &Path, sub: &str) -> Command {
    let mut command = match &args.emulator {
        Some(emulator) => {
            let mut c = Command::new(emulator);
            if let Some(sysroot) = &args.sysroot {
                c.arg("-L").arg(sysroot);
            }
            c.arg(&args.agent);
            c
        }
        None => Command::new(&args.agent),
    };
    command
        .arg(sub)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    command
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    args.server = std::fs::canonicalize(&args.server)
        .with_context(|| format!("--server {}", args.server.display()))?;
    args.agent = std::fs::canonicalize(&args.agent)
        .with_context(|| format!("--agent {}", args.agent.display()))?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Command::new(&args.server)
        .args(["server", "--dev", "--listen", &listen])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the platform")?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{listen}"))?;
    let channel = loop {
        match endpoint.connect().await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => bail!("the platform does not listen: {e}"),
        }
    };
    for service in [
        "sipmba.v1.CollectService",
        "sipmba.v1.ControlService",
        "sipmba.v1.TelemetryService",
    ] {
        serving(&channel, service, deadline).await?;
    }
    let admin = std::fs::read_to_string(dir.path().join(".sipmba/dev-admin.token"))?;

    // A user, its thing, and the thing's token.
    pb::account_service_client::AccountServiceClient::new(channel.clone())
        .register_user(with_token(
            &admin,
            pb::RegisterUserRequest {
                username: "edge-e2e".into(),
                password: "edge-e2e-password".into(),
            },
        ))
        .await?;
    let user = token(
        &channel,
        pb::token_request::Grant::Password(pb::PasswordGrant {
            username: "edge-e2e".into(),
            password: "edge-e2e-password".into(),
            scope: "things:write telemetry:read commands:write commands:read".into(),
        }),
    )
    .await?
    .access_token;
    let thing = pb::thing_service_client::ThingServiceClient::new(channel.clone())
        .create_thing(with_token(
            &user,
            pb::CreateThingRequest {
                name: "greenhouse-pi".into(),
                owner: None,
                labels: Default::default(),
            },
        ))
        .await?
        .into_inner();
    let thing_id = thing.id.clone().context("no thing id")?;
    let secret = pb::account_service_client::AccountServiceClient::new(channel.clone())
        .issue_thing_secret(with_token(
            &user,
            pb::IssueThingSecretRequest {
                thing: Some(thing_id.clone()),
            },
        ))
        .await?
        .into_inner();
    let thing_token = token(
        &channel,
        pb::token_request::Grant::ClientCredentials(pb::ClientCredentialsGrant {
            client_id: secret.client_id.clone(),
            client_secret: secret.client_secret,
            scope: String::new(),
        }),
    )
    .await?;
    // A command waiting for the thing before it ever wakes.
    let command = pb::control_service_client::ControlServiceClient::new(channel.clone())
        .send_command(with_token(
            &user,
            pb::SendCommandRequest {
                thing: Some(thing_id.clone()),
                name: "fan.on".into(),
                payload: vec![],
                ttl: None,
                idempotency_key: String::new(),
                on_behalf_of: None,
            },
        ))
        .await?
        .into_inner();

    // The agent, provisioned through its endpoint as the operator does.
    let enrollment = b"edge-e2e-enrollment-secret-0123456789";
    std::fs::write(dir.path().join("enrollment.secret"), enrollment)?;
    let provisioning_port = free_port();
    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\nsample_interval_secs = 1\nupload_interval_secs = 2\n\
             [provisioning]\nlisten = \"127.0.0.1:{provisioning_port}\"\nenrollment_secret_file = \"{}\"\n\
             [[sensors]]\nkind = \"simulated\"\nmetric = \"temperature\"\nunit = \"Cel\"\nmin = 18\nmax = 26\n\
             [[outputs]]\nname = \"fan\"\n",
            dir.path().join("edge").display(),
            dir.path().join("enrollment.secret").display()
        ),
    )?;
    let check = agent_command(&args, &config, "check-config")
        .status()
        .await?;
    if !check.success() {
        bail!("the agent refused its configuration");
    }
    let agent = agent_command(&args, &config, "run").spawn()?;
    let edge_endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{provisioning_port}"))?;
    let edge_channel = loop {
        match edge_endpoint.connect().await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("the agent's provisioning endpoint does not listen: {e}"),
        }
    };
    let mut edge = pb::edge_service_client::EdgeServiceClient::new(edge_channel);
    let expires = prost_types::Timestamp::from(
        std::time::SystemTime::now()
            + Duration::try_from(thing_token.expires_in.unwrap_or_default())
                .unwrap_or(Duration::from_secs(3600)),
    );
    let mut provision = pb::ProvisionRequest {
        enrollment_proof: String::new(),
        thing: Some(thing_id.clone()),
        access_token: thing_token.access_token,
        token_expires: Some(expires),
        collect_endpoint: format!("http://{listen}"),
        ca_certificate_pem: None,
        client_id: secret.client_id,
        client_secret: None,
        token_endpoint: None,
    };
    provision.enrollment_proof = sipmba_edge::provision::hmac_proof(
        enrollment,
        &sipmba_edge::provision::provision_message(&provision),
    );
    let provisioned = edge.provision(provision).await?.into_inner();
    println!(
        "provisioned sipmba-edge {} (outbox {} readings)",
        provisioned.agent_version, provisioned.outbox_depth
    );

    // Readings stored by Processing, and the command acknowledged by the agent.
    let mut telemetry = pb::telemetry_service_client::TelemetryServiceClient::new(channel.clone());
    let mut control = pb::control_service_client::ControlServiceClient::new(channel.clone());
    let (seq, state) = loop {
        let latest = telemetry
            .get_latest(with_token(
                &user,
                pb::GetLatestRequest {
                    things: vec![thing_id.clone()],
                    metrics: vec![],
                },
            ))
            .await?
            .into_inner();
        let state = control
            .get_command(with_token(
                &user,
                pb::GetCommandRequest {
                    id: command.id.clone(),
                },
            ))
            .await?
            .into_inner();
        let seq = latest.values.first().map_or(0, |l| l.seq);
        if seq >= 3 && state.state == pb::CommandState::Acked as i32 {
            break (seq, state);
        }
        if Instant::now() > deadline {
            bail!(
                "after {} s: latest seq {seq}, command {:?}",
                args.timeout_secs,
                state.state
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let status_request = {
        let mut r = pb::GetStatusRequest {
            enrollment_proof: String::new(),
            request_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        };
        r.enrollment_proof = sipmba_edge::provision::hmac_proof(
            enrollment,
            &sipmba_edge::provision::status_message(&r),
        );
        r
    };
    let status = edge.get_status(status_request).await?.into_inner();
    sigterm(agent, "the agent").await?;
    sigterm(server, "the platform").await?;
    println!(
        "edge cycle passed in {:.1} s: readings stored up to seq {seq}, command {} ACKED ({:?}), agent acknowledged up to seq {} with {} readings waiting, clean stop",
        started.elapsed().as_secs_f64(),
        state.name,
        state.detail,
        status.last_acked_seq,
        status.outbox_depth
    );
    Ok(())
}
