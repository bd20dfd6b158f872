//! Storage that stays bounded: two platforms (`sipmba server --dev`: on SQLite and tansu, or with
//! `--database postgres --broker kafka` on a PostgreSQL schema each and one Apache Kafka, topics
//! prefixed per platform) under the same steady load for 20 minutes, one with short retention,
//! the other with the defaults as the baseline, side by side in one run.
//!
//! Each platform has its things (10 by default) streaming readings over their own `Session`
//! (25 readings/s each, one reading of three metrics per frame), a rule per thing that fires on
//! the temperature (a command the device acknowledges, at most one per thing every 10 s) and a
//! live subscriber of every thing (`TelemetryService.Subscribe`). Every minute it prints, per
//! platform: readings acknowledged, events the subscriber received, commands acknowledged,
//! the server's resident memory and threads, the SQLite connections it holds open, the database's
//! size (`sipmba.db` with its write-ahead log; on PostgreSQL its schema's tables with their indexes
//! and TOAST) and the rest of the data directory (tansu's files; Kafka's are its own). With short retention (raw values 60 s,
//! minute rollups 120 s, hour rollups an hour) the database levels off once pruning has caught
//! up; with the defaults (30 days of raw values) it grows with every reading.
//!
//! Run: `cargo build --release -p sipmba && cargo run --release -p sipmba-e2e --bin soak-bench`
//! (`--minutes`, `--things`, `--rate` for the sizes, `--only short` for one platform,
//! `--database postgres --broker kafka` for the parts of a cluster; `.ci/setup` installs them).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use sipmba_e2e::{DevPlatform, ProcStats, frame, open_files, reading, token};
use sipmba_proto::v1::{
    self as pb, collect_service_client::CollectServiceClient, session_request, session_response,
};
use sipmba_testkit::{Flavour, TestBroker, TestDb, with_token};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// The `sipmba` binary.
    #[arg(long, default_value = "target/release/sipmba")]
    server: PathBuf,
    /// How long the load runs, in minutes.
    #[arg(long, default_value_t = 20)]
    minutes: u64,
    /// Things per platform.
    #[arg(long, default_value_t = 10)]
    things: usize,
    /// Readings per second per thing.
    #[arg(long, default_value_t = 25)]
    rate: u32,
    /// Raw retention of the short platform, in seconds (minute rollups twice it, hours an hour).
    #[arg(long, default_value_t = 60)]
    raw_retention: u64,
    /// `short` or `default` for one platform only.
    #[arg(long)]
    only: Option<String>,
    /// The platforms' database: `sqlite` (a file in each data directory) or `postgres` (a schema
    /// each).
    #[arg(long, default_value = "sqlite")]
    database: String,
    /// The log: `tansu` (each platform's own, embedded) or `kafka` (one Apache Kafka node for
    /// both, each platform's topics with a prefix of its own).
    #[arg(long, default_value = "tansu")]
    broker: String,
}

/// What one platform's load has done so far.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    acked: AtomicU64,
    commands: AtomicU64,
    events: AtomicU64,
}

struct Soak {
    name: &'static str,
    platform: DevPlatform,
    counts: Arc<Counts>,
    /// The platform's PostgreSQL schema and a connection to it, with `--database postgres`.
    postgres: Option<(TestDb, sea_orm::DatabaseConnection)>,
}

/// One minute's figures of a platform.
#[derive(Clone, Copy)]
struct Sample {
    minute: u64,
    acked: u64,
    events: u64,
    commands: u64,
    rss_kib: u64,
    threads: u64,
    /// SQLite connections open on the database: the server's descriptors on `sipmba.db`
    /// (none on PostgreSQL).
    connections: Option<usize>,
    db_bytes: u64,
    /// The data directory but the database: tansu's files (none with Kafka).
    log_bytes: Option<u64>,
}

/// A reading hot one time in fifty: each thing's rule has something to fire on.
fn hot_now_and_then(seq: u64) -> pb::Reading {
    let temperature = if seq.is_multiple_of(50) { 35.0 } else { 21.5 };
    reading(seq, [temperature, 48.0, 1013.2])
}

/// The configuration of a platform: short retention, or none (the defaults); its database and
/// log when they are not the embedded ones.
fn config(
    dir: &Path,
    name: &str,
    raw_retention: Option<u64>,
    database: Option<&str>,
    kafka: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("soak-{name}.toml"));
    let mut text = match raw_retention {
        Some(raw) => format!(
            "[processing]\nraw_retention_secs = {raw}\nminute_rollup_retention_secs = {}\nhour_rollup_retention_secs = {}\n",
            raw * 2,
            (raw * 2).max(3600)
        ),
        None => String::new(),
    };
    if let Some(url) = database {
        text.push_str(&format!("[database]\nurl = {url:?}\n"));
    }
    if let Some(addr) = kafka {
        text.push_str(&format!(
            "[queue]\nbrokers = [{addr:?}]\ntopic_prefix = \"soak-{name}-\"\n"
        ));
    }
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The size of the tables of the schema `db` connects to, with their indexes and TOAST.
async fn postgres_bytes(db: &sea_orm::DatabaseConnection) -> anyhow::Result<u64> {
    use sea_orm::ConnectionTrait;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::BIGINT AS bytes \
             FROM pg_class c WHERE c.relkind = 'r' \
             AND c.relnamespace = current_schema()::regnamespace",
        ))
        .await?
        .context("no size")?;
    Ok(u64::try_from(row.try_get::<i64>("", "bytes")?)?)
}

/// The platform user's access token with `scope`.
async fn login(channel: &Channel, scope: &str) -> anyhow::Result<String> {
    Ok(token(
        channel,
        pb::token_request::Grant::Password(pb::PasswordGrant {
            username: "edge-e2e".into(),
            password: "edge-e2e-password".into(),
            scope: scope.into(),
        }),
    )
    .await?
    .access_token)
}

/// A thing of the platform's user with its rule; its token.
async fn thing(
    platform: &DevPlatform,
    rules: &str,
    index: usize,
) -> anyhow::Result<(pb::ThingId, String)> {
    let channel = &platform.channel;
    let thing = pb::thing_service_client::ThingServiceClient::new(channel.clone())
        .create_thing(with_token(
            &platform.user,
            pb::CreateThingRequest {
                name: format!("soak-{index}"),
                owner: None,
                labels: Default::default(),
            },
        ))
        .await?
        .into_inner();
    let id = thing.id.context("no thing id")?;
    let secret = pb::account_service_client::AccountServiceClient::new(channel.clone())
        .issue_thing_secret(with_token(
            &platform.user,
            pb::IssueThingSecretRequest {
                thing: Some(id.clone()),
            },
        ))
        .await?
        .into_inner();
    let access = token(
        channel,
        pb::token_request::Grant::ClientCredentials(pb::ClientCredentialsGrant {
            client_id: secret.client_id,
            client_secret: secret.client_secret,
            scope: String::new(),
        }),
    )
    .await?
    .access_token;
    pb::rule_service_client::RuleServiceClient::new(channel.clone())
        .create_rule(with_token(
            rules,
            pb::CreateRuleRequest {
                rule: Some(pb::Rule {
                    name: format!("soak-{index}-hot"),
                    selector: Some(pb::rule::Selector::Thing(id.clone())),
                    metric: "temperature".into(),
                    comparison: pb::Comparison::Gt as i32,
                    threshold: 30.0,
                    cooldown: Some(prost_types::Duration {
                        seconds: 10,
                        nanos: 0,
                    }),
                    action: Some(pb::CommandTemplate {
                        name: "fan.on".into(),
                        payload: vec![],
                        ttl: Some(prost_types::Duration {
                            seconds: 60,
                            nanos: 0,
                        }),
                    }),
                    enabled: true,
                    ..Default::default()
                }),
            },
        ))
        .await?;
    Ok((id, access))
}

/// A device: its session, a reading every `period` until `stop`, every command acknowledged.
async fn device(
    listen: String,
    token: String,
    period: Duration,
    stop: Instant,
    counts: Arc<Counts>,
) -> anyhow::Result<()> {
    let channel = Endpoint::from_shared(format!("http://{listen}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let (tx, rx) = mpsc::channel(16);
    tx.send(frame(session_request::Frame::Hello(
        session_request::Hello {
            agent_version: "soak-bench".into(),
            last_acked_seq: None,
            max_commands: 16,
        },
    )))
    .await?;
    let mut inbound = CollectServiceClient::new(channel)
        .session(with_token(&token, ReceiverStream::new(rx)))
        .await?
        .into_inner();
    let Some(session_response::Frame::Welcome(_)) = inbound.message().await?.and_then(|m| m.frame)
    else {
        bail!("no Welcome");
    };
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seq, mut acked) = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if Instant::now() >= stop {
                    break;
                }
                seq += 1;
                let batch = session_request::TelemetryBatch { readings: vec![hot_now_and_then(seq)] };
                tx.send(frame(session_request::Frame::Telemetry(batch))).await?;
                counts.sent.fetch_add(1, Ordering::Relaxed);
            }
            message = inbound.message() => match message?.and_then(|m| m.frame) {
                Some(session_response::Frame::Ack(ack)) => {
                    counts.acked.fetch_add(ack.acked_seq.saturating_sub(acked), Ordering::Relaxed);
                    acked = acked.max(ack.acked_seq);
                }
                Some(session_response::Frame::Command(command)) => {
                    let ack = session_request::CommandAck {
                        command: command.id,
                        outcome: pb::CommandOutcome::Acked as i32,
                        detail: String::new(),
                        executed_at: None,
                    };
                    tx.send(frame(session_request::Frame::CommandAck(ack))).await?;
                    counts.commands.fetch_add(1, Ordering::Relaxed);
                }
                Some(session_response::Frame::RetryAfter(r)) => bail!("told to slow down: {r:?}"),
                Some(other) => bail!("unexpected frame {other:?}"),
                None => bail!("the session ended"),
            },
        }
    }
    let _ = tx
        .send(frame(session_request::Frame::Goodbye(
            session_request::Goodbye {},
        )))
        .await;
    Ok(())
}

/// Follows every thing until `stop`, subscribing again (with a fresh login) when a stream ends.
async fn subscriber(
    channel: Channel,
    things: Vec<pb::ThingId>,
    stop: Instant,
    counts: Arc<Counts>,
) -> anyhow::Result<()> {
    while Instant::now() < stop {
        let user = login(&channel, "telemetry:read").await?;
        let mut stream = pb::telemetry_service_client::TelemetryServiceClient::new(channel.clone())
            .subscribe(with_token(
                &user,
                pb::SubscribeRequest {
                    things: things.clone(),
                    channel: None,
                    metrics: vec![],
                },
            ))
            .await?
            .into_inner();
        loop {
            let left = stop.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.message()).await {
                Err(_) => return Ok(()),
                Ok(Ok(Some(_))) => {
                    counts.events.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(None)) | Ok(Err(_)) => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Bytes of the files under `dir` (recursively) that `pick` selects.
fn bytes_under(dir: &Path, pick: &dyn Fn(&Path) -> bool) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            match entry.metadata() {
                Ok(m) if m.is_dir() => bytes_under(&path, pick),
                Ok(m) if pick(&path) => m.len(),
                _ => 0,
            }
        })
        .sum()
}

fn is_database(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("sipmba.db"))
}

/// The database file itself, which every connection holds open once (not its `-wal`, `-shm`).
fn is_database_file(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()) == Some("sipmba.db")
}

async fn sample(soak: &Soak, minute: u64, kafka: bool) -> anyhow::Result<Sample> {
    let stats = ProcStats::of(soak.platform.pid())?;
    let dir = soak.platform.dir();
    let (connections, db_bytes) = match &soak.postgres {
        Some((_, db)) => (None, postgres_bytes(db).await?),
        None => (
            Some(open_files(soak.platform.pid(), &is_database_file)),
            bytes_under(dir, &is_database),
        ),
    };
    Ok(Sample {
        minute,
        acked: soak.counts.acked.load(Ordering::Relaxed),
        events: soak.counts.events.load(Ordering::Relaxed),
        commands: soak.counts.commands.load(Ordering::Relaxed),
        rss_kib: stats.rss_kib,
        threads: stats.threads,
        connections,
        db_bytes,
        log_bytes: (!kafka).then(|| bytes_under(dir, &|p| !is_database(p))),
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn print_row(name: &str, s: &Sample) {
    println!(
        "| {name} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} |",
        s.minute,
        s.acked,
        s.events,
        s.commands,
        s.rss_kib / 1024,
        s.threads,
        s.connections.map_or("—".into(), |c| c.to_string()),
        mib(s.db_bytes),
        s.log_bytes.map_or("—".into(), |b| format!("{:.1}", mib(b)))
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.server.exists() {
        bail!(
            "{} not found: run `cargo build --release -p sipmba` first",
            args.server.display()
        );
    }
    let postgres = match args.database.as_str() {
        "sqlite" => false,
        "postgres" => true,
        other => bail!("--database {other}: sqlite or postgres"),
    };
    let kafka = match args.broker.as_str() {
        "tansu" => false,
        "kafka" => true,
        other => bail!("--broker {other}: tansu or kafka"),
    };
    let parts: Vec<&str> = [postgres.then_some("postgres"), kafka.then_some("kafka")]
        .into_iter()
        .flatten()
        .collect();
    if !parts.is_empty() {
        let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/setup");
        let status = std::process::Command::new(&setup).args(&parts).status()?;
        anyhow::ensure!(status.success(), "{} failed", setup.display());
    }
    let kafka = match kafka {
        true => Some(TestBroker::start_own_of(Flavour::Kafka).await?),
        false => None,
    };
    let configs = tempfile::tempdir()?;
    let mut soaks = Vec::new();
    for (name, raw) in [("short", Some(args.raw_retention)), ("default", None)] {
        if args.only.as_deref().is_some_and(|only| only != name) {
            continue;
        }
        let postgres = match postgres {
            true => {
                let db = TestDb::postgres().await?;
                let conn = sipmba_runtime::db::connect(&db.url, 1).await?;
                Some((db, conn))
            }
            false => None,
        };
        let path = config(
            configs.path(),
            name,
            raw,
            postgres.as_ref().map(|(db, _)| db.url.as_str()),
            kafka.as_ref().map(|k| k.addr.as_str()),
        )?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let platform = DevPlatform::start_with(
            &args.server,
            deadline,
            &["--config", path.to_str().unwrap()],
        )
        .await
        .with_context(|| format!("starting the {name} platform"))?;
        soaks.push(Soak {
            name,
            platform,
            counts: Arc::default(),
            postgres,
        });
    }
    if soaks.is_empty() {
        bail!("--only takes short or default");
    }
    let stop = Instant::now() + Duration::from_secs(args.minutes * 60);
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for soak in &soaks {
        let mut ids = Vec::new();
        let rules = login(&soak.platform.channel, "rules:write").await?;
        for index in 0..args.things {
            let (id, access) = thing(&soak.platform, &rules, index).await?;
            ids.push(id);
            tasks.spawn(device(
                soak.platform.listen.clone(),
                access,
                period,
                stop,
                soak.counts.clone(),
            ));
        }
        tasks.spawn(subscriber(
            soak.platform.channel.clone(),
            ids,
            stop,
            soak.counts.clone(),
        ));
    }
    println!(
        "soak: {} minutes, {} things × {}/s per platform on {} and {}; raw retention {} s (short) and 30 days (default)",
        args.minutes, args.things, args.rate, args.database, args.broker, args.raw_retention
    );
    println!(
        "| platform | minute | readings acked | subscriber events | commands acked | RSS MiB | threads | database connections | database MiB | log MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); soaks.len()];
    for (i, soak) in soaks.iter().enumerate() {
        let s = sample(soak, 0, kafka.is_some()).await?;
        print_row(soak.name, &s);
        samples[i].push(s);
    }
    let mut minute = 0;
    while minute < args.minutes {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
            Some(done) = tasks.join_next() => {
                done??;
                continue;
            }
        }
        minute += 1;
        for (i, soak) in soaks.iter().enumerate() {
            let s = sample(soak, minute, kafka.is_some()).await?;
            print_row(soak.name, &s);
            samples[i].push(s);
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    println!();
    println!(
        "| platform | sent | acked | database MiB at minute 5 / 10 / end | database growth per minute, last 5 minutes | RSS MiB at minute 5 / 10 / end | RSS growth per minute, last 5 minutes |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (soak, rows) in soaks.iter().zip(&samples) {
        let at = |m: u64| rows.iter().find(|s| s.minute == m).or(rows.last()).unwrap();
        let end = rows.last().unwrap();
        let before = at(end.minute.saturating_sub(5));
        let minutes = (end.minute - before.minute).max(1);
        println!(
            "| {} | {} | {} | {:.1} / {:.1} / {:.1} | {:.2} MiB | {} / {} / {} | {:.2} MiB |",
            soak.name,
            soak.counts.sent.load(Ordering::Relaxed),
            end.acked,
            mib(at(5).db_bytes),
            mib(at(10).db_bytes),
            mib(end.db_bytes),
            (mib(end.db_bytes) - mib(before.db_bytes)) / minutes as f64,
            at(5).rss_kib / 1024,
            at(10).rss_kib / 1024,
            end.rss_kib / 1024,
            (end.rss_kib as f64 - before.rss_kib as f64) / 1024.0 / minutes as f64,
        );
    }
    for soak in soaks {
        soak.platform.stop().await?;
    }
    Ok(())
}
