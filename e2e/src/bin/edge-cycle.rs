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
use sipmba_e2e::{DevPlatform, free_port, sigterm};
use sipmba_proto::v1 as pb;
use sipmba_testkit::with_token;
use tokio::process::Command;

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
    let platform = DevPlatform::start(&args.server, deadline).await?;
    let (channel, listen, user, thing_id) = (
        platform.channel.clone(),
        platform.listen.clone(),
        platform.user.clone(),
        platform.thing.clone(),
    );
    let dir = platform.dir();
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
    std::fs::write(dir.join("enrollment.secret"), enrollment)?;
    let provisioning_port = free_port();
    let config = dir.join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\nsample_interval_secs = 1\nupload_interval_secs = 2\n\
             [provisioning]\nlisten = \"127.0.0.1:{provisioning_port}\"\nenrollment_secret_file = \"{}\"\n\
             [[sensors]]\nkind = \"simulated\"\nmetric = \"temperature\"\nunit = \"Cel\"\nmin = 18\nmax = 26\n\
             [[outputs]]\nname = \"fan\"\n",
            dir.join("edge").display(),
            dir.join("enrollment.secret").display()
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
    // Handed over as if about to expire, with the thing's own secret: the agent renews the
    // token from sso before its first session.
    let expires =
        prost_types::Timestamp::from(std::time::SystemTime::now() + Duration::from_secs(60));
    let mut provision = pb::ProvisionRequest {
        enrollment_proof: String::new(),
        thing: Some(thing_id.clone()),
        access_token: platform.thing_token.access_token.clone(),
        token_expires: Some(expires),
        collect_endpoint: format!("http://{listen}"),
        ca_certificate_pem: None,
        client_id: platform.client_id.clone(),
        client_secret: Some(platform.client_secret.clone()),
        token_endpoint: Some(format!("http://{listen}")),
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
    let renewed_for = status.token_expires.map_or(0, |t| t.seconds)
        - prost_types::Timestamp::from(std::time::SystemTime::now()).seconds;
    if renewed_for < 600 {
        bail!("the agent did not renew its token (it expires in {renewed_for} s)");
    }
    sigterm(agent, "the agent").await?;
    platform.stop().await?;
    println!(
        "edge cycle passed in {:.1} s: token renewed by the agent (now valid {} s), readings stored up to seq {seq}, command {} ACKED ({:?}), agent acknowledged up to seq {} with {} readings waiting, clean stop",
        started.elapsed().as_secs_f64(),
        renewed_for,
        state.name,
        state.detail,
        status.last_acked_seq,
        status.outbox_depth
    );
    Ok(())
}
