//! The paper's Table II, redone honestly and side by side in one run: one device sends
//! `"hello i"` messages through
//!
//! - (a) SIP-MBA: a Collect `Session` over gRPC into the log, counted when Collect has
//!   acknowledged them (broker-committed) and when a consumer has read them back — on a one-node
//!   Apache Kafka (the log of production), and on tansu with its durable sqlite storage and its
//!   memory storage;
//! - (b) the log alone: rskafka produce and fetch of the same records to the same broker;
//! - (c) Mosquitto (started here on a free loopback port), QoS 0, 1 and 2, publisher to
//!   subscriber.
//!
//! Every row counts lost and duplicated messages at the reader, measures p50/p99 end-to-end
//! latency at a fixed rate, and bytes on the wire per message on the device's connection
//! (through a counting proxy, in the fixed-rate run; not for (b) on Kafka, whose broker
//! advertises only itself). After the table, the targets as ratios of this run.
//!
//! Run: `cargo run --release -p sipmba-e2e --bin table2` (it runs `.ci/setup kafka tansu
//! mosquitto` first, which installs what is missing); `--messages`, `--rate` and `--rows` change
//! the sizes and the rows.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::time::{Duration, Instant};

use clap::Parser;
use prost::Message;
use sipmba_auth::{JwksSource, Kind, Revocations, Verifier, VerifierConfig, scopes};
use sipmba_collect::{Collect, Settings, TELEMETRY_TOPIC, store::AckStore};
use sipmba_e2e::CountingProxy;
use sipmba_proto::v1::{
    self as pb, collect_service_client::CollectServiceClient, session_request, session_response,
};
use sipmba_queue::{
    Queue, Reader,
    producer::{BatchLimits, Producer},
};
use sipmba_runtime::{Server, Shutdown, ShutdownTrigger};
use sipmba_testkit::{TestBroker, TestDb, TestIssuer, serve_jwks, with_token};
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

mod paths;
use paths::{through_collect, through_log, through_mosquitto};
use sipmba_e2e::Mosquitto;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Messages in the throughput runs.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Readings per gRPC batch, and records per produce request of the log-alone row.
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Messages per second in the latency runs.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Messages in each latency run.
    #[arg(long, default_value_t = 100_000)]
    latency_messages: u64,
    /// Only these rows (comma-separated prefixes of their keys, e.g. `a-kafka,b-kafka,c-1`).
    #[arg(long, value_delimiter = ',')]
    rows: Vec<String>,
    /// Mosquitto's port (set by the table run for each row's process).
    #[arg(long, default_value_t = 0)]
    mqtt_port: u16,
    /// Measure one row in this process and print its figures as JSON (used by the table run).
    #[arg(long)]
    row: Option<String>,
    /// In-flight window of the MQTT publisher at QoS 1. Mosquitto's defaults keep at most 1,000
    /// messages queued per subscriber and drop the rest, so the window is what keeps the baseline
    /// lossless at its best speed (measured: 100 is as fast as 1,000 and loses nothing).
    #[arg(long, default_value_t = 100)]
    mqtt_inflight: u16,
    /// In-flight window of the MQTT publisher at QoS 2 (Mosquitto's own `max_inflight_messages`;
    /// 50 or more overflow its subscriber queue and lose messages).
    #[arg(long, default_value_t = 20)]
    mqtt_inflight_qos2: u16,
}

fn payload(i: u64) -> Vec<u8> {
    format!("hello {i}").into_bytes()
}

fn reading(i: u64) -> pb::Reading {
    pb::Reading {
        seq: i,
        device_time: None,
        metrics: vec![],
        payload: payload(i),
    }
}

/// What a reader saw: each message index counted once, repeats counted as duplicates, and the
/// latency of each first sight when the sender kept a schedule.
struct Tally {
    total: u64,
    seen: Vec<bool>,
    unique: u64,
    duplicates: u64,
    schedule: Option<(Instant, u64)>,
    latencies_us: Vec<u64>,
    done_at: Option<Instant>,
}

impl Tally {
    fn new(total: u64, schedule: Option<(Instant, u64)>) -> Self {
        Self {
            total,
            seen: vec![false; usize::try_from(total + 1).unwrap()],
            unique: 0,
            duplicates: 0,
            schedule,
            latencies_us: Vec::new(),
            done_at: None,
        }
    }

    fn saw(&mut self, i: u64, now: Instant) {
        let Some(slot) = usize::try_from(i).ok().and_then(|i| self.seen.get_mut(i)) else {
            return;
        };
        if *slot {
            self.duplicates += 1;
            return;
        }
        *slot = true;
        self.unique += 1;
        if let Some((start, rate)) = self.schedule {
            let due = start + Duration::from_secs_f64((i - 1) as f64 / rate as f64);
            self.latencies_us
                .push(now.saturating_duration_since(due).as_micros() as u64);
        }
        if self.unique == self.total {
            self.done_at = Some(now);
        }
    }

    fn complete(&self) -> bool {
        self.unique == self.total
    }

    fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let index = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[index] as f64 / 1000.0
    }
}

/// The result of one run.
struct Run {
    committed: Option<Duration>,
    consumed: Duration,
    tally: Tally,
    wire_bytes: u64,
}

/// Reads `topic` partition 0 until every index is seen (or nothing new comes for `idle`).
async fn consume(
    queue: Queue,
    topic: &'static str,
    mut tally: Tally,
    wait: Duration,
    idle: Duration,
) -> Tally {
    let partition = queue.partition(topic, 0).await.unwrap();
    // A fixed wait: the measured latency must not include the reader's idle back-off.
    let mut reader = Reader::new(partition, Some(0))
        .with_wait(wait)
        .with_idle_wait(wait);
    let mut last_progress = Instant::now();
    while !tally.complete() && last_progress.elapsed() < idle {
        let (records, _, _) = match reader.next().await {
            Ok(step) => step,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let now = Instant::now();
        if !records.is_empty() {
            last_progress = now;
        }
        for (_, value) in records {
            let record = pb::TelemetryRecord::decode(value.as_slice()).unwrap();
            tally.saw(record.reading.map_or(0, |r| r.seq), now);
        }
    }
    tally
}

/// The pieces of a Collect platform over one broker.
struct Platform {
    channel: tonic::transport::Channel,
    collect_addr: String,
    token: String,
    queue: Queue,
    _trigger: ShutdownTrigger,
    _jwks: sipmba_testkit::JwksServer,
    _db: TestDb,
}

/// The broker of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Log {
    /// Apache Kafka, one node.
    Kafka,
    /// tansu with sqlite storage (durable).
    TansuSqlite,
    /// tansu with memory storage (its offsets are buggy; a speed reference only).
    TansuMemory,
}

impl Log {
    fn of(row: &str) -> Self {
        if row.contains("kafka") {
            Self::Kafka
        } else if row.contains("sqlite") {
            Self::TansuSqlite
        } else {
            Self::TansuMemory
        }
    }

    /// A broker of this kind; tansu advertises `advertised` (a proxy) when given.
    async fn start(self, advertised: Option<String>) -> anyhow::Result<TestBroker> {
        match self {
            Self::Kafka => TestBroker::start_own_of(sipmba_testkit::Flavour::Kafka).await,
            Self::TansuSqlite => TestBroker::start_tansu("sqlite://tansu.db", advertised).await,
            Self::TansuMemory => TestBroker::start_tansu("memory://tansu/", advertised).await,
        }
    }
}

/// Collect on `broker`, with topics of its own (a fresh prefix): the runs of a row share a warm
/// broker, as a platform's log is.
async fn platform(broker: &TestBroker, batch: u64) -> anyhow::Result<Platform> {
    let prefix = format!("{}{}.", broker.prefix, Uuid::new_v4().simple());
    let db = TestDb::sqlite()?;
    let conn = sipmba_runtime::db::connect(&db.url, 5).await?;
    sipmba_collect::migrate(&conn).await?;
    let queue = Queue::connect(&broker.brokers(), &prefix).await?;
    let producer = Producer::new(
        &queue,
        TELEMETRY_TOPIC,
        1,
        BatchLimits {
            max_records: usize::try_from(batch)?.max(1),
            ..sipmba_collect::telemetry_batch_limits()
        },
    )
    .await?;
    let issuer = TestIssuer::new();
    let (url, jwks) = serve_jwks(serde_json::to_value(issuer.key.jwks())?).await?;
    let verifier = Verifier::new(
        VerifierConfig::new(JwksSource::Url(url), &issuer.issuer, &issuer.audience),
        Revocations::default(),
    )?;
    let (trigger, shutdown) = Shutdown::new();
    let limits = Settings {
        readings_per_second: 10_000_000,
        burst_readings: 10_000_000,
        max_batch_readings: u32::try_from(batch)?,
        ..Settings::default()
    };
    let collect = Collect::new(
        producer,
        AckStore::new(conn),
        verifier.clone(),
        limits,
        "table2",
        shutdown.clone(),
    );
    let mut server = Server::new();
    collect.register(&mut server);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(server.run(listener, None, verifier, shutdown, Duration::from_secs(1)));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let thing = Uuid::new_v4();
    let token = issuer.sign(
        &issuer
            .claims(Kind::Thing, thing, &[scopes::TELEMETRY_WRITE])
            .with_owner(Uuid::new_v4()),
    );
    Ok(Platform {
        channel,
        collect_addr: addr.to_string(),
        token,
        queue,
        _trigger: trigger,
        _jwks: jwks,
        _db: db,
    })
}

/// Batches of readings `1..=n`: as fast as possible, or on a schedule of `rate` per second
/// (every millisecond, what is due).
fn batches(
    n: u64,
    batch: u64,
    rate: Option<u64>,
    start: Instant,
) -> tokio::sync::mpsc::Receiver<Vec<u64>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut next = 1;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        while next <= n {
            let until = match rate {
                None => (next + batch - 1).min(n),
                Some(rate) => {
                    tick.tick().await;
                    let due = (start.elapsed().as_secs_f64() * rate as f64) as u64 + 1;
                    due.min(n).min(next + batch - 1)
                }
            };
            if until < next {
                continue;
            }
            if tx.send((next..=until).collect()).await.is_err() {
                return;
            }
            next = until + 1;
        }
    });
    rx
}

/// The rows, each measured in a process of its own so that nothing left from one row (a
/// reconnecting client, a server task) takes CPU from the next.
const ROWS: &[(&str, &str)] = &[
    ("a-kafka", "(a) SIP-MBA gRPC → Collect → log, Apache Kafka"),
    ("b-kafka", "(b) rskafka produce + fetch, Apache Kafka"),
    ("a-sqlite", "(a) SIP-MBA gRPC → Collect → log, tansu sqlite"),
    ("b-sqlite", "(b) rskafka produce + fetch, tansu sqlite"),
    ("a-memory", "(a) SIP-MBA gRPC → Collect → log, tansu memory"),
    ("b-memory", "(b) rskafka produce + fetch, tansu memory"),
    (
        "b-memory-100",
        "(b) the same in batches of 100 (mid-sized requests), TCP_NODELAY as sipmba-queue sets it",
    ),
    (
        "b-memory-100-nagle",
        "(b) the same in batches of 100, rskafka as is (Nagle on: the stall sipmba-queue removes)",
    ),
    ("c-0", "(c) Mosquitto QoS 0, publisher → subscriber"),
    ("c-1", "(c) Mosquitto QoS 1, publisher → subscriber"),
    ("c-2", "(c) Mosquitto QoS 2, publisher → subscriber"),
];

/// Measures one row: throughput, latency at the fixed rate, bytes on the device's connection.
async fn measure(row: &str, args: &Args) -> anyhow::Result<serde_json::Value> {
    let (n, ln, rate) = (args.messages, args.latency_messages, args.rate);
    let (throughput, mut latency, bytes) = match row {
        "a-kafka" | "a-sqlite" | "a-memory" => {
            let broker = Log::of(row).start(None).await?;
            let p = platform(&broker, args.batch).await?;
            let throughput = through_collect(&p, args, n, None, false).await;
            drop(p);
            let p = platform(&broker, args.batch).await?;
            let latency = through_collect(&p, args, ln, Some(rate), true).await;
            let bytes = latency.wire_bytes;
            (throughput, latency, bytes)
        }
        "b-kafka" | "b-sqlite" | "b-memory" | "b-memory-100" | "b-memory-100-nagle" => {
            let nodelay = !row.ends_with("nagle");
            let log = Log::of(row);
            let mut args = args.clone();
            if row.contains("-100") {
                args.batch = 100;
            }
            let args = &args;
            // Nagle's stall makes that row slow: it gets fewer messages.
            let n = if nodelay { n } else { n.min(50_000) };
            let broker = log.start(None).await?;
            let throughput = through_log(&broker, log, nodelay, args, n, None, false).await;
            let latency = through_log(&broker, log, nodelay, args, ln, Some(rate), false).await;
            // A Kafka broker advertises only its own listener: no proxy in its path.
            let bytes = if log == Log::Kafka {
                0
            } else {
                through_log(&broker, log, nodelay, args, ln, Some(rate), true)
                    .await
                    .wire_bytes
            };
            (throughput, latency, bytes)
        }
        "c-0" | "c-1" | "c-2" => {
            let qos = match row {
                "c-0" => rumqttc::QoS::AtMostOnce,
                "c-1" => rumqttc::QoS::AtLeastOnce,
                _ => rumqttc::QoS::ExactlyOnce,
            };
            let throughput = through_mosquitto(qos, args, n, None, false).await;
            let latency = through_mosquitto(qos, args, ln, Some(rate), true).await;
            let bytes = latency.wire_bytes;
            (throughput, latency, bytes)
        }
        other => anyhow::bail!("unknown row {other:?}"),
    };
    let n = throughput.tally.total;
    Ok(serde_json::json!({
        "messages": n,
        "committed_s": throughput.committed.map(|c| c.as_secs_f64()),
        "consumed_s": throughput.consumed.as_secs_f64(),
        "received": throughput.tally.unique,
        "lost": (n - throughput.tally.unique.min(n)) + (ln - latency.tally.unique.min(ln)),
        "duplicated": throughput.tally.duplicates + latency.tally.duplicates,
        "p50_ms": latency.tally.percentile_ms(0.50),
        "p99_ms": latency.tally.percentile_ms(0.99),
        "bytes_per_message": bytes as f64 / ln as f64,
    }))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(row) = &args.row {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let result = runtime.block_on(measure(row, &args))?;
        println!("RESULT {result}");
        // Do not wait for the tasks left behind.
        std::process::exit(0);
    }
    // What the rows need, installed when missing.
    let setup = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/setup");
    let status = std::process::Command::new(&setup)
        .args(["kafka", "tansu", "mosquitto"])
        .status()?;
    anyhow::ensure!(status.success(), "{} failed", setup.display());
    let mosquitto = Mosquitto::start()?;

    let (n, ln, rate) = (args.messages, args.latency_messages, args.rate);
    println!(
        "Table II redone: {n} messages \"hello i\" from one device; latency at {rate} msg/s over {ln} messages; batches of {}; MQTT in-flight window {} (QoS 2: {})",
        args.batch, args.mqtt_inflight, args.mqtt_inflight_qos2
    );
    println!();
    println!(
        "| path | messages | committed s | read back s | messages/s (read back) | lost | duplicated | p50 ms @ {rate}/s | p99 ms @ {rate}/s | bytes/msg on the device's connection |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let exe = std::env::current_exe()?;
    let mut results = std::collections::HashMap::new();
    for (row, name) in ROWS {
        if !args.rows.is_empty() && !args.rows.iter().any(|r| row.starts_with(r.as_str())) {
            continue;
        }
        let output = std::process::Command::new(&exe)
            .args(std::env::args().skip(1))
            .args(["--row", row, "--mqtt-port", &mosquitto.port.to_string()])
            .stderr(std::process::Stdio::inherit())
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let Some(line) = text.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
            println!("| {name} | failed: {} |", output.status);
            continue;
        };
        let r: serde_json::Value = serde_json::from_str(line)?;
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let committed = r["committed_s"]
            .as_f64()
            .map_or_else(|| "—".to_owned(), |c| format!("{c:.2}"));
        let bytes = f("bytes_per_message");
        println!(
            "| {name} | {} | {committed} | {:.2} | {:.0} | {} | {} | {:.1} | {:.1} | {} |",
            r["messages"],
            f("consumed_s"),
            f("received") / f("consumed_s"),
            r["lost"],
            r["duplicated"],
            f("p50_ms"),
            f("p99_ms"),
            if bytes > 0.0 {
                format!("{bytes:.1}")
            } else {
                "—".to_owned()
            },
        );
        results.insert(*row, r);
    }
    drop(mosquitto);

    // The targets, as ratios of this run.
    let rate_of = |row: &str| {
        results.get(row).map(|r| {
            r["received"].as_f64().unwrap_or(0.0) / r["consumed_s"].as_f64().unwrap_or(f64::NAN)
        })
    };
    println!();
    if let (Some(a), Some(b)) = (rate_of("a-kafka"), rate_of("b-kafka")) {
        println!(
            "(a) / (b) on Kafka: {:.2} (target ≥ 0.9) {}",
            a / b,
            verdict(a / b >= 0.9)
        );
    }
    if let (Some(a), Some(c)) = (rate_of("a-kafka"), rate_of("c-1")) {
        println!(
            "(a) on Kafka / Mosquitto QoS 1: {:.2} (target ≥ 1.5) {}",
            a / c,
            verdict(a / c >= 1.5)
        );
    }
    if let Some(r) = results.get("a-kafka") {
        let p99 = r["p99_ms"].as_f64().unwrap_or(f64::NAN);
        println!(
            "(a) on Kafka, p99 at {rate}/s: {p99:.1} ms (target ≤ 20 ms) {}",
            verdict(p99 <= 20.0)
        );
    }
    let clean = results
        .iter()
        .filter(|(row, _)| !row.starts_with('c'))
        .all(|(_, r)| r["lost"].as_u64() == Some(0) && r["duplicated"].as_u64() == Some(0));
    println!(
        "lost and duplicated, rows (a) and (b): {}",
        if clean {
            "none ✓"
        } else {
            "some ✗ (see the table)"
        }
    );
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met { "✓" } else { "✗ missed" }
}
