//! What the edge agent costs per reading, next to the same readings published over MQTT QoS 1 to
//! Mosquitto by a minimal client, measured in one run:
//!
//! - the agent (`sipmba-edge run`) uploads a backlog of readings (three metrics each, as a BME280
//!   gives) from its outbox to `sipmba server --dev` in one wake: CPU time of the process per
//!   reading, its peak and idle resident memory, and bytes on the wire per reading (both
//!   directions, through a counting proxy), until Processing has stored the last one;
//! - the baseline: a process that publishes the same encoded readings with rumqttc at QoS 1 to
//!   Mosquitto (127.0.0.1:1883), in flight window 100, until every PUBACK is in — no outbox, no
//!   commands, no token.
//!
//! Run: `cargo run --release -p sipmba-e2e --bin edge-bench -- --server target/release/sipmba
//! --agent target/release/sipmba-edge` (tansu on the PATH, Mosquitto running).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use prost::Message;
use sipmba_e2e::{CountingProxy, DevPlatform, sigterm};
use sipmba_proto::v1 as pb;
use sipmba_testkit::with_token;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt},
    net::TcpListener,
    process::Command,
};

#[derive(Parser, Debug)]
struct Args {
    /// The `sipmba` server binary.
    #[arg(long)]
    server: Option<PathBuf>,
    /// The `sipmba-edge` binary.
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Readings uploaded.
    #[arg(long, default_value_t = 20_000)]
    readings: u64,
    /// (Internal) publish this many readings over MQTT to `--port`, then wait for stdin to close.
    #[arg(long, hide = true)]
    mqtt_publisher: Option<u64>,
    /// (Internal) the MQTT port.
    #[arg(long, hide = true, default_value_t = 1883)]
    port: u16,
}

fn metrics(i: u64) -> Vec<pb::Metric> {
    let number = |name: &str, v: f64, unit: &str| pb::Metric {
        name: name.into(),
        value: Some(pb::metric::Value::Number(v)),
        unit: unit.into(),
    };
    let x = (i % 100) as f64 / 100.0;
    vec![
        number("temperature", 20.0 + x, "Cel"),
        number("humidity", 45.0 + x, "%RH"),
        number("pressure", 1013.0 + x, "hPa"),
    ]
}

fn timestamp(i: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: 1_760_000_000 + i64::try_from(i).unwrap(),
        nanos: 0,
    }
}

struct Row {
    name: &'static str,
    readings: u64,
    elapsed: Duration,
    cpu: Duration,
    rss_kib: u64,
    peak_kib: u64,
    bytes: u64,
}

impl Row {
    fn print(&self) {
        let n = self.readings as f64;
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            self.name,
            self.readings,
            self.elapsed.as_secs_f64(),
            self.cpu.as_secs_f64() * 1000.0,
            self.cpu.as_secs_f64() * 1e6 / n,
            self.peak_kib as f64 / 1024.0,
            self.rss_kib as f64 / 1024.0,
            self.bytes as f64 / n,
        );
    }
}

async fn agent_row(args: &Args) -> anyhow::Result<Row> {
    let server = args.server.as_ref().context("--server is required")?;
    let agent = std::fs::canonicalize(args.agent.as_ref().context("--agent is required")?)?;
    let n = args.readings;
    let platform = DevPlatform::start(server, Instant::now() + Duration::from_secs(120)).await?;
    let state = platform.dir().join("edge");
    {
        let outbox = sipmba_edge::outbox::Outbox::open(
            &state,
            n + 10,
            sipmba_edge::config::WhenFull::DropOldest,
        )?;
        let stored = outbox.append_many((1..=n).map(|i| (timestamp(i), metrics(i))))?;
        assert_eq!(stored, n);
    }
    let proxy = CountingProxy::start(
        TcpListener::bind("127.0.0.1:0").await?,
        platform.listen.clone(),
    )
    .await;
    let config = platform.dir().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\nsample_interval_secs = 86400\nupload_interval_secs = 86400\n\
             [[sensors]]\nkind = \"simulated\"\nmetric = \"temperature\"\nmin = 18\nmax = 26\n",
            state.display()
        ),
    )?;
    let token_file = platform.dir().join("thing.token");
    std::fs::write(&token_file, &platform.thing_token.access_token)?;
    let provisioned = Command::new(&agent)
        .arg("provision")
        .arg("--config")
        .arg(&config)
        .args(["--thing", &platform.thing.value, "--token-file"])
        .arg(&token_file)
        .args(["--collect", &format!("http://{}", proxy.addr)])
        .output()
        .await?;
    if !provisioned.status.success() {
        bail!("provisioning failed: {provisioned:?}");
    }
    let started = Instant::now();
    let child = Command::new(&agent)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("agent pid")?;
    let mut telemetry =
        pb::telemetry_service_client::TelemetryServiceClient::new(platform.channel.clone());
    let deadline = Instant::now() + Duration::from_secs(600);
    // The backlog, and the one reading the agent takes when it starts.
    let elapsed = loop {
        let latest = telemetry
            .get_latest(with_token(
                &platform.user,
                pb::GetLatestRequest {
                    things: vec![platform.thing.clone()],
                    metrics: vec!["temperature".into()],
                },
            ))
            .await?
            .into_inner();
        if latest.values.first().is_some_and(|l| l.seq > n) {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            bail!("the backlog was not stored in time");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Let the session end (final Ack, Goodbye), then read the process.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sipmba_e2e::ProcStats {
        cpu,
        rss_kib,
        peak_kib,
        ..
    } = sipmba_e2e::ProcStats::of(pid)?;
    let bytes = proxy.bytes();
    sigterm(child, "the agent").await?;
    platform.stop().await?;
    Ok(Row {
        name: "sipmba-edge → Collect (gRPC session, outbox, acks)",
        readings: n + 1,
        elapsed,
        cpu,
        rss_kib,
        peak_kib,
        bytes,
    })
}

async fn mqtt_row(args: &Args) -> anyhow::Result<Row> {
    let n = args.readings;
    let proxy = CountingProxy::start(
        TcpListener::bind("127.0.0.1:0").await?,
        "127.0.0.1:1883".into(),
    )
    .await;
    let port: u16 = proxy.addr.rsplit_once(':').context("port")?.1.parse()?;
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--mqtt-publisher",
            &n.to_string(),
            "--port",
            &port.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("publisher pid")?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    match lines.next_line().await? {
        Some(line) if line == "done" => {}
        other => bail!("the MQTT publisher failed: {other:?}"),
    }
    let elapsed = started.elapsed();
    let sipmba_e2e::ProcStats {
        cpu,
        rss_kib,
        peak_kib,
        ..
    } = sipmba_e2e::ProcStats::of(pid)?;
    let bytes = proxy.bytes();
    drop(child.stdin.take());
    child.wait().await?;
    Ok(Row {
        name: "MQTT QoS 1 → Mosquitto (rumqttc, no outbox)",
        readings: n,
        elapsed,
        cpu,
        rss_kib,
        peak_kib,
        bytes,
    })
}

/// The baseline's process: publishes `n` readings at QoS 1 and reports when all are acknowledged.
async fn mqtt_publisher(n: u64, port: u16) -> anyhow::Result<()> {
    let mut options = rumqttc::MqttOptions::new(
        format!("edge-bench-{}", uuid::Uuid::new_v4().simple()),
        "127.0.0.1",
        port,
    );
    options.set_keep_alive(Duration::from_secs(60));
    options.set_inflight(100);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 1000);
    let topic = format!("sipmba-edge-bench/{}", uuid::Uuid::new_v4().simple());
    let publisher = tokio::spawn(async move {
        for i in 1..=n {
            let reading = pb::Reading {
                seq: i,
                device_time: Some(timestamp(i)),
                metrics: metrics(i),
                payload: vec![],
            };
            client
                .publish(
                    &topic,
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    reading.encode_to_vec(),
                )
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    while acked < n {
        if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = events.poll().await? {
            acked += 1;
        }
    }
    let client = publisher.await?;
    println!("done");
    // Stay alive (and connected) until the parent has read the process's figures.
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 1];
    let _ = stdin.read(&mut buf).await;
    drop(client);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(n) = args.mqtt_publisher {
        return mqtt_publisher(n, args.port).await;
    }
    let agent = agent_row(&args).await?;
    let mqtt = mqtt_row(&args).await?;
    println!(
        "| path | readings | s | CPU ms | CPU µs/reading | peak RSS MiB | RSS after MiB | bytes/reading on the wire |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    agent.print();
    mqtt.print();
    Ok(())
}
