//! A fleet on one Collect: what each open session costs, and how fast readings are acknowledged
//! under fleet load, side by side with the same clients held open against Mosquitto, in one run.
//!
//! - **Idle**: N devices (1,000, 5,000, 10,000 by default), each its own TCP connection and
//!   `Session` (Hello with a command window, as the edge agent opens it), no readings. Collect —
//!   `sipmba server --target collect`, its own process, on PostgreSQL and the log — is measured
//!   from `/proc`: resident memory over its idle baseline, per session, and CPU as a share of one
//!   core over a quiet window. The baseline: the same N MQTT clients (rumqttc, keep-alive 60 s,
//!   each subscribed at QoS 1 to its own command topic) against Mosquitto, its memory per
//!   connection and its CPU.
//! - **Busy**: 1,000 devices at 20 readings/s each (one reading of three metrics per frame) for
//!   60 s: acknowledgement latency p50/p99/max from the frame's send to the Ack covering it,
//!   Collect's CPU per reading, and nothing lost — every acknowledged reading is read back from
//!   the telemetry topic. The baseline: the same devices publishing at QoS 1 to Mosquitto, PUBACK
//!   latency, its CPU per message, and what a subscriber received.
//!
//! The benchmark client shares the machine's cores with Collect, the broker and PostgreSQL;
//! CPU per reading is Collect's (or Mosquitto's) process alone, and each busy run also prints
//! the client's CPU and how busy all the machine's cores were (`/proc/stat`), which says whether
//! the latencies were measured on a saturated machine.
//!
//! Run: `cargo build --release -p sipmba && cargo run --release -p sipmba-e2e --bin fleet-bench`
//! (`.ci/setup postgres kafka tansu mosquitto` runs first and installs what is missing);
//! `--broker tansu` for the embedded log, `--idle`, `--busy-things`, `--rate`, `--seconds` for
//! the sizes, `--only sipmba` or `--only mosquitto` for one side; `FLEET_COLLECT_LOG=<file>` keeps
//! Collect's log there.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use prost::Message;
use sipmba_e2e::{Mosquitto, ProcStats, frame, reading};
use sipmba_proto::v1::{
    self as pb, collect_service_client::CollectServiceClient, session_request, session_response,
};
use sipmba_queue::{Queue, Reader};
use sipmba_testkit::{Flavour, TestBroker, TestDb, TestIssuer, serve_jwks, with_token};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Streaming, transport::Endpoint};
use uuid::Uuid;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// The `sipmba` server binary (default: `sipmba` beside this benchmark's binary).
    #[arg(long)]
    server: Option<PathBuf>,
    /// The log: `kafka` (one Apache Kafka node) or `tansu` (its SQLite storage).
    #[arg(long, default_value = "kafka")]
    broker: String,
    /// Collect's database: `postgres` (as in a cluster) or `sqlite`.
    #[arg(long, default_value = "postgres")]
    database: String,
    /// Open sessions at which the idle costs are measured (each step adds to the previous).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    idle: Vec<usize>,
    /// Seconds of the quiet window over which idle CPU is measured at each step.
    #[arg(long, default_value_t = 30)]
    idle_window: u64,
    /// Devices of the busy run.
    #[arg(long, default_value_t = 1000)]
    busy_things: usize,
    /// Readings per second of each device in the busy run.
    #[arg(long, default_value_t = 20)]
    rate: u64,
    /// Seconds of the busy run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Only one side: `sipmba` or `mosquitto`.
    #[arg(long)]
    only: Option<String>,
    /// More `[collect]` settings for Collect, as TOML lines (e.g. `telemetry_partitions = 8`).
    #[arg(long)]
    collect_setting: Vec<String>,
}

/// One sample of a process: when, and its figures.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    stats: ProcStats,
}

impl Sample {
    fn of(pid: u32) -> anyhow::Result<Self> {
        Ok(Self {
            at: Instant::now(),
            stats: ProcStats::of(pid)?,
        })
    }

    /// CPU used since `earlier`, as a share of one core (%).
    fn core_percent_since(&self, earlier: &Self) -> f64 {
        let cpu = self
            .stats
            .cpu
            .saturating_sub(earlier.stats.cpu)
            .as_secs_f64();
        100.0 * cpu / self.at.duration_since(earlier.at).as_secs_f64()
    }
}

/// The idle figures at one step.
struct IdleStep {
    sessions: usize,
    open_s: f64,
    rss_over_kib: u64,
    core_percent: f64,
}

impl IdleStep {
    fn kib_each(&self) -> f64 {
        self.rss_over_kib as f64 / self.sessions as f64
    }
}

/// The busy figures of one side.
#[derive(Default)]
struct Busy {
    sent: u64,
    acked: u64,
    read_back: Option<u64>,
    lost: u64,
    duplicates: Option<u64>,
    latencies_us: Vec<u64>,
    cpu: Duration,
    /// The share of all the machine's cores busy over the run (%): the server, this client, the
    /// log, the database and anything else.
    machine_percent: f64,
    /// This benchmark's own CPU over the run (the devices' side), as a share of one core (%).
    client_percent: f64,
}

/// The CPU counters at the start of a busy run: the server's, this process's, the machine's.
struct BusyWindow {
    server: Sample,
    client: Sample,
    machine: sipmba_e2e::MachineCpu,
}

impl BusyWindow {
    fn start(server: u32) -> anyhow::Result<Self> {
        Ok(Self {
            server: Sample::of(server)?,
            client: Sample::of(std::process::id())?,
            machine: sipmba_e2e::MachineCpu::now()?,
        })
    }

    /// Fills `busy`'s CPU figures for the run since the start.
    fn finish(self, server: u32, busy: &mut Busy) -> anyhow::Result<()> {
        let after = Sample::of(server)?;
        busy.cpu = after.stats.cpu.saturating_sub(self.server.stats.cpu);
        busy.client_percent = Sample::of(std::process::id())?.core_percent_since(&self.client);
        busy.machine_percent = sipmba_e2e::MachineCpu::now()?.busy_percent_since(&self.machine);
        Ok(())
    }
}

impl Busy {
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.latencies_us
            .last()
            .map_or(f64::NAN, |&m| m as f64 / 1000.0)
    }

    fn cpu_us_per_reading(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.acked.max(1) as f64
    }
}

/// Collect in a process of its own, on `database` and `broker`, verifying tokens of `issuer`.
struct CollectProcess {
    addr: String,
    child: std::process::Child,
    queue: Queue,
    _jwks: sipmba_testkit::JwksServer,
    _dir: tempfile::TempDir,
}

impl CollectProcess {
    async fn start(
        server: &std::path::Path,
        database_url: &str,
        broker: &TestBroker,
        issuer: &TestIssuer,
        settings: &[String],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (jwks_url, jwks) = serve_jwks(serde_json::to_value(issuer.key.jwks())?).await?;
        let prefix = format!("{}fleet{}.", broker.prefix, Uuid::new_v4().simple());
        let config = dir.path().join("sipmba.toml");
        std::fs::write(
            &config,
            format!(
                "[queue]\ntopic_prefix = \"{prefix}\"\n\n[collect]\nmax_sessions = 50000\n{}\n",
                settings.join("\n")
            ),
        )?;
        let addr = format!("127.0.0.1:{}", sipmba_e2e::free_port());
        let log = std::fs::File::create(
            std::env::var("FLEET_COLLECT_LOG")
                .map_or_else(|_| dir.path().join("collect.log"), PathBuf::from),
        )?;
        let child = sipmba_testkit::tied_command(server)
            .args([
                "server",
                "--target",
                "collect",
                "--plaintext",
                "--listen",
                &addr,
            ])
            .args(["--database-url", database_url, "--jwks-url", &jwks_url])
            .args(["--issuer", &issuer.issuer, "--audience", &issuer.audience])
            .args(["--brokers", &broker.brokers().join(",")])
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", server.display()))?;
        let channel = Endpoint::from_shared(format!("http://{addr}"))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(channel) = channel.connect().await {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let serving = health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: "sipmba.v1.CollectService".into(),
                    })
                    .await
                    .is_ok_and(|r| {
                        r.into_inner().status
                            == tonic_health::pb::health_check_response::ServingStatus::Serving
                                as i32
                    });
                if serving {
                    break;
                }
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.path().join("collect.log"))?;
                bail!("collect did not serve within 120 s; its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let queue = Queue::connect(&broker.brokers(), &prefix).await?;
        Ok(Self {
            addr,
            child,
            queue,
            _jwks: jwks,
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for CollectProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A device's open session: the frames it sends and the ones it receives.
struct Device {
    tx: mpsc::Sender<pb::SessionRequest>,
    inbound: Streaming<pb::SessionResponse>,
}

/// Opens a session as the edge agent does: a connection of its own, Hello with a command window,
/// Welcome back.
async fn open(addr: &str, token: &str) -> anyhow::Result<Device> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(20))
        .tcp_nodelay(true)
        .connect()
        .await?;
    let (tx, rx) = mpsc::channel(8);
    let hello = session_request::Hello {
        agent_version: "fleet-bench".into(),
        last_acked_seq: None,
        max_commands: 16,
    };
    tx.send(frame(session_request::Frame::Hello(hello))).await?;
    let mut inbound = CollectServiceClient::new(channel)
        .session(with_token(token, ReceiverStream::new(rx)))
        .await?
        .into_inner();
    match inbound.message().await?.and_then(|m| m.frame) {
        Some(session_response::Frame::Welcome(_)) => Ok(Device { tx, inbound }),
        other => bail!("expected Welcome, got {other:?}"),
    }
}

/// Opens `tokens.len()` sessions, at most 200 being opened at once; the devices come back in the
/// tokens' order.
async fn open_all(addr: &str, tokens: &[String]) -> anyhow::Result<Vec<Device>> {
    let opened: Vec<anyhow::Result<Device>> = futures::stream::iter(tokens.iter())
        .map(|token| open(addr, token))
        .buffered(200)
        .collect()
        .await;
    opened.into_iter().collect()
}

fn thing_tokens(issuer: &TestIssuer, things: &[Uuid]) -> Vec<String> {
    let owner = Uuid::new_v4();
    things
        .iter()
        .map(|&thing| issuer.thing_token(thing, owner))
        .collect()
}

/// Waits for a quiet moment, then measures `pid` over `window`: memory at the end, CPU across.
async fn quiet(pid: u32, window: Duration) -> anyhow::Result<(Sample, Sample)> {
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start = Sample::of(pid)?;
    tokio::time::sleep(window).await;
    Ok((start, Sample::of(pid)?))
}

async fn idle_steps<Open, Fut, H>(
    pid: u32,
    steps: &[usize],
    window: Duration,
    mut open_more: Open,
) -> anyhow::Result<(u64, Vec<IdleStep>, Vec<H>)>
where
    Open: FnMut(usize, usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<H>>>,
{
    let (_, base) = quiet(pid, Duration::from_secs(1)).await?;
    let base_rss = base.stats.rss_kib;
    let mut held = Vec::new();
    let mut rows = Vec::new();
    for &n in steps {
        let started = Instant::now();
        let more = open_more(held.len(), n.saturating_sub(held.len())).await?;
        held.extend(more);
        let open_s = started.elapsed().as_secs_f64();
        let (start, end) = quiet(pid, window).await?;
        let step = IdleStep {
            sessions: held.len(),
            open_s,
            rss_over_kib: end.stats.rss_kib.saturating_sub(base_rss),
            core_percent: end.core_percent_since(&start),
        };
        eprintln!(
            "  {} open in {:.1} s: {:.1} KiB each, {:.2} % of a core",
            step.sessions,
            step.open_s,
            step.kib_each(),
            step.core_percent
        );
        rows.push(step);
    }
    Ok((base_rss, rows, held))
}

/// The busy run through Collect: `tokens.len()` devices at `rate` readings/s for `seconds`.
async fn busy_collect(
    collect: &CollectProcess,
    things: &[Uuid],
    tokens: &[String],
    args: &Args,
) -> anyhow::Result<Busy> {
    let devices = open_all(&collect.addr, tokens).await?;
    let period = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let run = Duration::from_secs(args.seconds);
    let window = BusyWindow::start(collect.pid())?;
    let start = tokio::time::Instant::now() + Duration::from_millis(500);
    let n = devices.len() as u32;
    let mut tasks = Vec::new();
    for (i, device) in devices.into_iter().enumerate() {
        // Devices are not in step: their first readings spread over one period.
        let first = start + period * u32::try_from(i).unwrap() / n;
        tasks.push(tokio::spawn(device_busy(device, first, period, run)));
    }
    let mut busy = Busy::default();
    let mut acked_up_to = Vec::new();
    for task in tasks {
        let (sent, acked, latencies) = task.await??;
        busy.sent += sent;
        busy.acked += acked;
        acked_up_to.push(acked);
        busy.latencies_us.extend(latencies);
    }
    window.finish(collect.pid(), &mut busy)?;
    busy.latencies_us.sort_unstable();
    let metrics = reqwest::get(format!("http://{}/metrics", collect.addr))
        .await?
        .text()
        .await?;
    for (name, what) in [
        (
            "sipmba_collect_commit_seconds",
            "the log's commit of a group",
        ),
        ("sipmba_collect_record_seconds", "the position's record"),
    ] {
        let value = |suffix: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}_{suffix} ")))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        eprintln!(
            "  {what}: {:.0} groups, {:.2} ms on average",
            value("count"),
            1000.0 * value("sum") / value("count")
        );
    }

    // Read the telemetry topic back: every acknowledged reading must be there.
    let index: HashMap<String, usize> = things
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i))
        .collect();
    let mut seen: Vec<Vec<bool>> = acked_up_to
        .iter()
        .map(|&a| vec![false; usize::try_from(a).unwrap() + 1])
        .collect();
    let (mut read, mut duplicates) = (0, 0);
    let topic = sipmba_collect::TELEMETRY_TOPIC;
    for partition in 0..collect.queue.partition_count(topic).await? {
        let client = collect.queue.partition(topic, partition).await?;
        let end = Queue::end_offset(&client).await?;
        let mut reader = Reader::new(client, Some(0));
        let mut next = 0;
        while next < end {
            let (records, after, _) = reader.next().await?;
            next = after;
            for (_, value) in records {
                let record = pb::TelemetryRecord::decode(value.as_slice())?;
                let thing = record.thing.map(|t| t.value).unwrap_or_default();
                let seq = record.reading.map_or(0, |r| r.seq);
                read += 1;
                let slot = index
                    .get(&thing)
                    .and_then(|&i| seen[i].get_mut(usize::try_from(seq).unwrap()));
                match slot {
                    Some(slot) if *slot => duplicates += 1,
                    Some(slot) => *slot = true,
                    None => {} // sent, not acknowledged yet when the run ended
                }
            }
        }
    }
    busy.read_back = Some(read);
    busy.duplicates = Some(duplicates);
    busy.lost = seen
        .iter()
        .map(|s| s.iter().skip(1).filter(|&&x| !x).count() as u64)
        .sum();
    Ok(busy)
}

/// One device of the busy run: a reading per `period` from `first` for `run`, then waits for
/// the last Ack (at most 10 s) and says goodbye. Returns readings sent, the seq acknowledged, and
/// each reading's acknowledgement latency (µs).
async fn device_busy(
    mut device: Device,
    first: tokio::time::Instant,
    period: Duration,
    run: Duration,
) -> anyhow::Result<(u64, u64, Vec<u64>)> {
    let mut ticks = tokio::time::interval_at(first, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = first + run;
    let mut pending: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut latencies = Vec::new();
    let (mut seq, mut acked) = (0u64, 0u64);
    let mut drain_until = None;
    loop {
        if drain_until.is_some() && acked == seq {
            break;
        }
        tokio::select! {
            _ = ticks.tick(), if drain_until.is_none() => {
                if tokio::time::Instant::now() >= stop {
                    drain_until = Some(tokio::time::Instant::now() + Duration::from_secs(10));
                    continue;
                }
                seq += 1;
                pending.push_back((seq, Instant::now()));
                let batch = session_request::TelemetryBatch { readings: vec![reading(seq, [21.5, 48.0, 1013.2])] };
                device.tx.send(frame(session_request::Frame::Telemetry(batch))).await?;
            }
            message = device.inbound.message() => {
                match message?.and_then(|m| m.frame) {
                    Some(session_response::Frame::Ack(ack)) => {
                        let now = Instant::now();
                        while pending.front().is_some_and(|(s, _)| *s <= ack.acked_seq) {
                            let (_, sent) = pending.pop_front().unwrap();
                            latencies.push(u64::try_from(now.duration_since(sent).as_micros()).unwrap());
                        }
                        acked = acked.max(ack.acked_seq);
                    }
                    Some(session_response::Frame::RetryAfter(r)) => bail!("told to slow down: {r:?}"),
                    Some(other) => bail!("unexpected frame {other:?}"),
                    None => bail!("the session ended"),
                }
            }
            () = tokio::time::sleep_until(drain_until.unwrap_or(stop + Duration::from_secs(3600))), if drain_until.is_some() => break,
        }
    }
    let _ = device
        .tx
        .send(frame(session_request::Frame::Goodbye(
            session_request::Goodbye {},
        )))
        .await;
    Ok((seq, acked, latencies))
}

/// An MQTT client held open until `stop`: connected, subscribed to its command topic at QoS 1.
async fn mqtt_idle(
    port: u16,
    i: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut options = rumqttc::MqttOptions::new(format!("fleet-{i}"), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(60));
    let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
    let mut ready = Some(ready);
    client
        .subscribe(format!("fleet/{i}/commands"), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        tokio::select! {
            event = events.poll() => match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("MQTT client {i}: {e}"),
            },
            _ = stop.changed() => return,
        }
    }
}

async fn mqtt_open_all(
    port: u16,
    from: usize,
    n: usize,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let opened: Vec<_> = futures::stream::iter(from..from + n)
        .map(|i| {
            let stop = stop.clone();
            async move {
                let (ready, is_ready) = tokio::sync::oneshot::channel();
                let task = tokio::spawn(mqtt_idle(port, i, stop, ready));
                tokio::time::timeout(Duration::from_secs(30), is_ready)
                    .await
                    .context("an MQTT client did not connect and subscribe within 30 s")??;
                anyhow::Ok(task)
            }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    opened.into_iter().collect()
}

/// The busy baseline: `things` MQTT clients publishing at QoS 1 at `rate`/s for `seconds`, and a
/// subscriber counting what arrives.
async fn busy_mosquitto(mosquitto: &Mosquitto, args: &Args) -> anyhow::Result<Busy> {
    let port = mosquitto.port;
    // The subscriber: everything the devices publish.
    let mut options = rumqttc::MqttOptions::new("fleet-subscriber", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(60));
    options.set_inflight(1000);
    let (subscriber, mut sub_events) = rumqttc::AsyncClient::new(options, 1000);
    subscriber
        .subscribe("fleet/+/telemetry", rumqttc::QoS::AtLeastOnce)
        .await?;
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = received.clone();
    let sub_task = tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        while let Ok(event) = sub_events.poll().await {
            match event {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(_)) => {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                _ => {}
            }
        }
    });
    subscribed.await?;

    let period = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let run = Duration::from_secs(args.seconds);
    let window = BusyWindow::start(mosquitto.pid())?;
    let start = tokio::time::Instant::now() + Duration::from_millis(500);
    let n = args.busy_things as u32;
    let mut tasks = Vec::new();
    for i in 0..args.busy_things {
        let first = start + period * u32::try_from(i).unwrap() / n;
        tasks.push(tokio::spawn(mqtt_busy(port, i, first, period, run)));
    }
    let mut busy = Busy::default();
    for task in tasks {
        let (sent, acked, latencies) = task.await??;
        busy.sent += sent;
        busy.acked += acked;
        busy.latencies_us.extend(latencies);
    }
    window.finish(mosquitto.pid(), &mut busy)?;
    busy.latencies_us.sort_unstable();
    // The subscriber's last messages.
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(std::sync::atomic::Ordering::Relaxed) < busy.acked
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = received.load(std::sync::atomic::Ordering::Relaxed);
    busy.read_back = Some(got);
    busy.lost = busy.acked.saturating_sub(got);
    sub_task.abort();
    Ok(busy)
}

/// One MQTT device of the busy run; PUBACKs of one connection come in order.
async fn mqtt_busy(
    port: u16,
    i: usize,
    first: tokio::time::Instant,
    period: Duration,
    run: Duration,
) -> anyhow::Result<(u64, u64, Vec<u64>)> {
    let mut options = rumqttc::MqttOptions::new(format!("fleet-busy-{i}"), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(60));
    options.set_inflight(100);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 100);
    let topic = format!("fleet/{i}/telemetry");
    let mut ticks = tokio::time::interval_at(first, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = first + run;
    let mut pending: VecDeque<Instant> = VecDeque::new();
    let mut latencies = Vec::new();
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut draining = false;
    let drain_deadline = stop + Duration::from_secs(10);
    loop {
        if draining && acked == sent {
            break;
        }
        tokio::select! {
            _ = ticks.tick(), if !draining => {
                if tokio::time::Instant::now() >= stop {
                    draining = true;
                    continue;
                }
                sent += 1;
                pending.push_back(Instant::now());
                client
                    .try_publish(&topic, rumqttc::QoS::AtLeastOnce, false, reading(sent, [21.5, 48.0, 1013.2]).encode_to_vec())
                    .context("the MQTT client's queue is full")?;
            }
            event = events.poll() => {
                if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = event? {
                    let sent_at = pending.pop_front().context("a PUBACK for nothing sent")?;
                    latencies.push(u64::try_from(sent_at.elapsed().as_micros()).unwrap());
                    acked += 1;
                }
            }
            () = tokio::time::sleep_until(drain_deadline), if draining => break,
        }
    }
    let _ = client.try_disconnect();
    Ok((sent, acked, latencies))
}

fn print_idle(name: &str, rows: &[IdleStep], base_rss: u64) {
    for r in rows {
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.4} |",
            r.sessions,
            r.open_s,
            base_rss as f64 / 1024.0,
            r.rss_over_kib as f64 / 1024.0,
            r.kib_each(),
            r.core_percent,
            r.core_percent / r.sessions as f64 * 1000.0
        );
    }
}

fn print_busy(name: &str, b: &Busy) {
    println!(
        "| {name} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} | {:.0} |",
        b.sent,
        b.acked,
        b.read_back.map_or("—".into(), |r| r.to_string()),
        b.lost,
        b.duplicates.map_or("—".into(), |d| d.to_string()),
        b.percentile_ms(0.50),
        b.percentile_ms(0.99),
        b.max_ms(),
        b.cpu_us_per_reading(),
        b.client_percent,
        b.machine_percent
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let largest = args
        .idle
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(args.busy_things);
    let files = sipmba_e2e::raise_file_limit(u64::try_from(largest).unwrap() * 2 + 4096)?;
    let setup = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/setup");
    let status = std::process::Command::new(&setup)
        .args(["postgres", "kafka", "tansu", "mosquitto"])
        .status()?;
    anyhow::ensure!(status.success(), "{} failed", setup.display());
    let server = match &args.server {
        Some(s) => s.clone(),
        None => std::env::current_exe()?.with_file_name("sipmba"),
    };
    anyhow::ensure!(
        server.exists(),
        "{} is missing: build it first (cargo build --release -p sipmba) or name it with --server",
        server.display()
    );
    let sipmba_side = args.only.as_deref() != Some("mosquitto");
    let mosquitto_side = args.only.as_deref() != Some("sipmba");
    let window = Duration::from_secs(args.idle_window);
    println!(
        "Fleet on one Collect ({} log, {} database, open-file limit {files}): idle at {:?} sessions, quiet windows of {} s; busy: {} devices x {} readings/s for {} s",
        args.broker,
        args.database,
        args.idle,
        args.idle_window,
        args.busy_things,
        args.rate,
        args.seconds
    );

    let mut sipmba = None;
    if sipmba_side {
        let broker = match args.broker.as_str() {
            "kafka" => TestBroker::start_own_of(Flavour::Kafka).await?,
            "tansu" => TestBroker::start_tansu("sqlite://tansu.db", None).await?,
            other => bail!("--broker {other}: kafka or tansu"),
        };
        let db = match args.database.as_str() {
            "postgres" => TestDb::postgres().await?,
            "sqlite" => TestDb::sqlite()?,
            other => bail!("--database {other}: postgres or sqlite"),
        };
        let issuer = TestIssuer::new();
        let collect =
            CollectProcess::start(&server, &db.url, &broker, &issuer, &args.collect_setting)
                .await?;
        eprintln!(
            "collect (pid {}) serving on {}",
            collect.pid(),
            collect.addr
        );
        let things: Vec<Uuid> = (0..largest).map(|_| Uuid::new_v4()).collect();
        let tokens = thing_tokens(&issuer, &things);
        eprintln!("idle sessions:");
        let (base, idle, held) = idle_steps(collect.pid(), &args.idle, window, |from, n| {
            open_all(&collect.addr, &tokens[from..from + n])
        })
        .await?;
        let peak = ProcStats::of(collect.pid())?.rss_kib;
        drop(held);
        // What the allocator gives back, soon and once its decay times (10 s) have passed.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let soon = ProcStats::of(collect.pid())?.rss_kib;
        tokio::time::sleep(Duration::from_secs(25)).await;
        let closed = [peak, soon, ProcStats::of(collect.pid())?.rss_kib];
        eprintln!("busy run:");
        let busy_things: Vec<Uuid> = (0..args.busy_things).map(|_| Uuid::new_v4()).collect();
        let busy_tokens = thing_tokens(&issuer, &busy_things);
        let busy = busy_collect(&collect, &busy_things, &busy_tokens, &args).await?;
        sipmba = Some((base, idle, closed, busy));
    }

    let mut mqtt = None;
    if mosquitto_side {
        let mosquitto = Mosquitto::start()?;
        eprintln!(
            "mosquitto (pid {}) on port {}",
            mosquitto.pid(),
            mosquitto.port
        );
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        eprintln!("idle MQTT clients:");
        let (base, idle, held) = idle_steps(mosquitto.pid(), &args.idle, window, |from, n| {
            mqtt_open_all(mosquitto.port, from, n, &stop)
        })
        .await?;
        let _ = stop_tx.send(true);
        for task in held {
            let _ = task.await;
        }
        eprintln!("busy MQTT run:");
        let busy = busy_mosquitto(&mosquitto, &args).await?;
        mqtt = Some((base, idle, busy));
    }

    println!();
    println!(
        "| idle | sessions | opened in s | RSS before MiB | RSS over it MiB | KiB per session | CPU % of a core | CPU % per 1,000 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    if let Some((base, idle, _, _)) = &sipmba {
        print_idle("SIP-MBA Collect (gRPC Session)", idle, *base);
    }
    if let Some((base, idle, _)) = &mqtt {
        print_idle("Mosquitto (MQTT, QoS 1 subscription)", idle, *base);
    }
    if let Some((base, _, [peak, soon, later], _)) = &sipmba {
        let mib = |kib: &u64| *kib as f64 / 1024.0;
        println!(
            "\nCollect's RSS: {:.1} MiB before the sessions, {:.1} MiB with all open; after they all closed, {:.1} MiB at 5 s and {:.1} MiB at 30 s",
            mib(base),
            mib(peak),
            mib(soon),
            mib(later)
        );
    }
    println!();
    println!(
        "| busy, {} devices x {}/s for {} s | sent | acknowledged | read back | lost | duplicated | p50 ms | p99 ms | max ms | CPU µs per reading | client CPU % of a core | machine busy % of {} cores |",
        args.busy_things,
        args.rate,
        args.seconds,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    if let Some((_, _, _, busy)) = &sipmba {
        print_busy("SIP-MBA Collect (Ack after commit to the log)", busy);
    }
    if let Some((_, _, busy)) = &mqtt {
        print_busy("Mosquitto QoS 1 (PUBACK = received)", busy);
    }

    println!();
    if let Some((_, idle, _, busy)) = &sipmba
        && let Some(last) = idle.last()
    {
        println!(
            "target: {} idle sessions at ≤ 16 KiB each: {:.1} KiB — {}",
            last.sessions,
            last.kib_each(),
            verdict(last.kib_each() <= 16.0)
        );
        println!(
            "target: {} idle sessions at ≤ 1 % of a core: {:.2} % — {}",
            last.sessions,
            last.core_percent,
            verdict(last.core_percent <= 1.0)
        );
        println!(
            "target: busy p99 ≤ 20 ms: {:.2} ms — {}",
            busy.percentile_ms(0.99),
            verdict(busy.percentile_ms(0.99) <= 20.0)
        );
        println!(
            "target: nothing acknowledged lost: {} lost — {}",
            busy.lost,
            verdict(busy.lost == 0)
        );
        if let Some((_, mqtt_idle, _)) = &mqtt
            && let Some(m) = mqtt_idle.last()
        {
            let ratio = last.kib_each() / m.kib_each();
            println!(
                "target: memory per session ≤ 2 x Mosquitto's per connection: {:.1} / {:.1} KiB = {ratio:.2} x — {}",
                last.kib_each(),
                m.kib_each(),
                verdict(ratio <= 2.0)
            );
        }
    }
    // Do not wait for the connections left behind.
    std::process::exit(0);
}
