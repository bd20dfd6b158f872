#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

//! The agent against a real Collect (in-process, gRPC over loopback) on the real broker: the
//! outbox reaches the log in order and is emptied by acknowledgements, commands run once.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use prost::Message;
use sipmba_auth::{Kind, scopes};
use sipmba_collect::{Collect, Settings, inbox::Inbox, store::AckStore};
use sipmba_edge::{
    agent::{Agent, Outputs},
    config::Config,
};
use sipmba_proto::v1 as pb;
use sipmba_queue::{
    Queue,
    producer::{BatchLimits, Producer},
    topics,
};
use sipmba_runtime::{Server, Shutdown, ShutdownTrigger};
use sipmba_testkit::{Backend, TestBroker, TestDb, TestIssuer};
use uuid::Uuid;

mod provisioning;

const PARTITIONS: i32 = 2;

struct Platform {
    url: String,
    queue: Queue,
    issuer: TestIssuer,
    _trigger: ShutdownTrigger,
    _broker: TestBroker,
    _jwks: sipmba_testkit::JwksServer,
    _db: TestDb,
}

impl Platform {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, TestIssuer::new(), Settings::default(), None).await
    }

    /// Collect on `listener`, trusting `issuer`'s tokens.
    async fn start_on(
        listener: tokio::net::TcpListener,
        issuer: TestIssuer,
        limits: Settings,
        tls: Option<sipmba_runtime::TlsFiles>,
    ) -> Self {
        sipmba_testkit::init_logs();
        let db = TestDb::new(Backend::Sqlite).await.unwrap();
        let conn = sipmba_runtime::db::connect(&db.url, 5).await.unwrap();
        sipmba_collect::migrate(&conn).await.unwrap();
        let broker = TestBroker::start().await.unwrap();
        let queue = Queue::connect(&broker.brokers(), &broker.prefix)
            .await
            .unwrap();
        let (verifier, jwks) = issuer.verifier().await.unwrap();
        let (trigger, shutdown) = Shutdown::new();
        let producer = Producer::new(
            &queue,
            topics::TELEMETRY,
            PARTITIONS,
            BatchLimits::default(),
        )
        .await
        .unwrap();
        let inbox = Inbox::start(&queue, PARTITIONS, "collect-0", shutdown.clone())
            .await
            .unwrap();
        while !inbox.ready() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let collect = Collect::new(
            producer,
            AckStore::new(conn),
            verifier.clone(),
            limits,
            "collect-0",
            shutdown.clone(),
        )
        .with_inbox(inbox);
        let mut server = Server::new();
        collect.register(&mut server);
        let url = match tls {
            None => {
                sipmba_testkit::serve_on(listener, server, verifier, shutdown)
                    .await
                    .unwrap()
                    .1
            }
            Some(tls) => {
                let url = format!("https://{}", listener.local_addr().unwrap());
                tokio::spawn(async move {
                    server
                        .run(
                            listener,
                            Some(&tls),
                            verifier,
                            shutdown,
                            Duration::from_secs(1),
                        )
                        .await
                });
                url
            }
        };
        Self {
            url,
            queue,
            issuer,
            _trigger: trigger,
            _broker: broker,
            _jwks: jwks,
            _db: db,
        }
    }

    fn thing_token(&self, thing: Uuid) -> String {
        thing_token(&self.issuer, thing)
    }

    /// Queues a command for `thing` as Control does.
    async fn command(&self, thing: Uuid, id: Uuid, name: &str) {
        let producer = Producer::new(
            &self.queue,
            topics::COMMANDS,
            PARTITIONS,
            BatchLimits::default(),
        )
        .await
        .unwrap();
        let now = std::time::SystemTime::now();
        let record = pb::CommandRecord {
            id: Some(pb::CommandId {
                value: id.to_string(),
            }),
            thing: Some(pb::ThingId {
                value: thing.to_string(),
            }),
            issuer: None,
            name: name.into(),
            payload: vec![],
            created: Some(now.into()),
            expires: Some((now + Duration::from_secs(3600)).into()),
        };
        producer
            .send(thing.to_string().as_bytes(), record.encode_to_vec())
            .await
            .await
            .unwrap()
            .unwrap();
    }

    /// The seqs of `thing` in the telemetry log, in log order per partition, once `n` distinct ones
    /// are there.
    async fn logged(&self, thing: Uuid, n: usize) -> Vec<u64> {
        let seen: Arc<Mutex<BTreeMap<i32, Vec<u64>>>> = Arc::default();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        for partition in 0..PARTITIONS {
            let client = self
                .queue
                .partition(topics::TELEMETRY, partition)
                .await
                .unwrap();
            let seen = seen.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(sipmba_queue::follow(
                client,
                Some(0),
                sipmba_queue::IDLE_FETCH_WAIT,
                move |_, value| {
                    let record = pb::TelemetryRecord::decode(value).unwrap();
                    if record.thing.unwrap().value == thing.to_string() {
                        seen.lock()
                            .unwrap()
                            .entry(partition)
                            .or_default()
                            .push(record.reading.unwrap().seq);
                    }
                },
                || {},
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let all: Vec<u64> = seen.lock().unwrap().values().flatten().copied().collect();
            // Distinct readings: one resent after a kill may stand twice in the log, and must
            // not count for one still on its way.
            let distinct = all.iter().collect::<std::collections::BTreeSet<_>>().len();
            if distinct >= n {
                stop_tx.send(true).unwrap();
                return all;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{distinct} of {n} distinct readings logged"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn thing_token(issuer: &TestIssuer, thing: Uuid) -> String {
    issuer.thing_token(thing, Uuid::new_v4())
}

fn config(state_dir: &std::path::Path) -> Config {
    Config::parse(&format!(
        r#"
state_dir = "{}"
[[sensors]]
kind = "simulated"
metric = "temperature"
unit = "Cel"
min = 18
max = 26
[[outputs]]
name = "fan"
"#,
        state_dir.display()
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_reaches_collect_in_order_and_a_command_runs_once() {
    let platform = Platform::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let agent = Agent::open(config.clone(), Outputs::open(&config)).unwrap();
    for _ in 0..300 {
        agent.sample().await.unwrap().unwrap();
    }
    assert_eq!(agent.outbox.depth().unwrap(), 300);
    let thing = Uuid::new_v4();
    let command = Uuid::new_v4();
    platform.command(thing, command, "fan.toggle").await;
    agent
        .credentials
        .replace(pb::ProvisionRequest {
            thing: Some(pb::ThingId {
                value: thing.to_string(),
            }),
            access_token: platform.thing_token(thing),
            collect_endpoint: platform.url.clone(),
            ..Default::default()
        })
        .unwrap();
    let creds = agent.credentials.get().unwrap();

    let report = agent.session(&creds).await.unwrap();
    assert_eq!(report.acked_seq, 300);
    assert_eq!((report.commands, report.executed), (1, 1));
    assert_eq!(
        agent.outbox.depth().unwrap(),
        0,
        "acknowledged readings leave the outbox"
    );
    assert_eq!(agent.output_is_on("fan"), Some(true));
    // One thing's readings share a partition: the log holds them in seq order, once each.
    assert_eq!(
        platform.logged(thing, 300).await,
        (1..=300).collect::<Vec<_>>()
    );

    // The next wake: new readings only, and no command (it was acknowledged).
    for _ in 0..5 {
        agent.sample().await.unwrap().unwrap();
    }
    let report = agent.session(&creds).await.unwrap();
    assert_eq!(report.acked_seq, 305);
    assert_eq!(report.sent, 5);
    assert_eq!(report.commands, 0);

    // Delivered again (its acknowledgement lost on the way), also after a restart, the command
    // is answered with its recorded outcome and not run again: the fan stays on.
    let delivery = pb::session_response::CommandDelivery {
        id: Some(pb::CommandId {
            value: command.to_string(),
        }),
        name: "fan.toggle".into(),
        payload: vec![],
        created: None,
        expires: None,
    };
    let (ack, ran) = agent.handle_command(delivery.clone()).await.unwrap();
    assert!(!ran);
    assert_eq!(ack.outcome, pb::CommandOutcome::Acked as i32);
    assert_eq!(ack.detail, "fan is on");
    drop(agent);
    let restarted = Agent::open(config.clone(), Outputs::open(&config)).unwrap();
    let (_, ran) = restarted.handle_command(delivery).await.unwrap();
    assert!(!ran, "remembered across a restart");
    assert_eq!(
        restarted.output_is_on("fan"),
        Some(false),
        "a new process starts with the fan off, and did not toggle it"
    );
    // An unknown command fails with what the agent takes.
    let (ack, _) = restarted
        .handle_command(pb::session_response::CommandDelivery {
            id: Some(pb::CommandId {
                value: Uuid::new_v4().to_string(),
            }),
            name: "door.open".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ack.outcome, pb::CommandOutcome::Failed as i32);
    assert!(ack.detail.contains("fan.on, fan.toggle"), "{}", ack.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_taken_while_the_platform_is_down_for_a_minute_are_flushed_in_order() {
    // The platform's address, with nothing listening yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let issuer = TestIssuer::new();
    let thing = Uuid::new_v4();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.sample_interval = Duration::from_millis(500);
    config.upload_interval = Duration::from_secs(1);
    config.max_backoff = Duration::from_secs(4);
    let agent = Agent::open(config.clone(), Outputs::open(&config)).unwrap();
    agent
        .credentials
        .replace(pb::ProvisionRequest {
            thing: Some(pb::ThingId {
                value: thing.to_string(),
            }),
            access_token: thing_token(&issuer, thing),
            collect_endpoint: format!("http://127.0.0.1:{port}"),
            ..Default::default()
        })
        .unwrap();
    let sampler = tokio::spawn(agent.clone().sampler());
    let uploader = tokio::spawn(agent.clone().uploader());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let buffered = agent.outbox.depth().unwrap();
    assert!(
        buffered >= 100,
        "sampling went on while the platform was down ({buffered})"
    );
    assert!(!uploader.is_finished(), "the uploader keeps trying");
    // The platform comes back on the same address.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let platform = Platform::start_on(listener, issuer, Settings::default(), None).await;
    let logged = platform
        .logged(thing, usize::try_from(buffered).unwrap())
        .await;
    let n = u64::try_from(logged.len()).unwrap();
    assert_eq!(
        logged,
        (1..=n).collect::<Vec<_>>(),
        "every reading, in order, once"
    );
    sampler.abort();
    uploader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_upload_loses_nothing_and_counts_nothing_twice() {
    // Small batches, so that the upload takes a while and the kill lands in its middle.
    let platform = Platform::start_on(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TestIssuer::new(),
        Settings {
            max_batch_readings: 10,
            readings_per_second: 1_000_000,
            burst_readings: 1_000_000,
            ..Settings::default()
        },
        None,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let total = 2_000;
    {
        let config = config(dir.path());
        let agent = Agent::open(config.clone(), Outputs::open(&config)).unwrap();
        for _ in 0..total {
            agent.sample().await.unwrap().unwrap();
        }
    }
    let thing = Uuid::new_v4();
    let config_file = dir.path().join("config.toml");
    std::fs::write(
        &config_file,
        format!(
            "state_dir = \"{}\"\nsample_interval_secs = 3600\nupload_interval_secs = 1\n\
             [[sensors]]\nkind = \"simulated\"\nmetric = \"temperature\"\nmin = 18\nmax = 26\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    // The outbox filled above moves to the agent's state directory.
    std::fs::create_dir(dir.path().join("state")).unwrap();
    std::fs::rename(
        dir.path().join("outbox.redb"),
        dir.path().join("state/outbox.redb"),
    )
    .unwrap();
    std::fs::write(dir.path().join("token"), platform.thing_token(thing)).unwrap();
    let bin = env!("CARGO_BIN_EXE_sipmba-edge");
    let provision = tokio::process::Command::new(bin)
        .args(["provision", "--config"])
        .arg(&config_file)
        .args(["--thing", &thing.to_string(), "--token-file"])
        .arg(dir.path().join("token"))
        .args(["--collect", &platform.url])
        .output()
        .await
        .unwrap();
    assert!(provision.status.success(), "{provision:?}");
    let spawn = || {
        tokio::process::Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&config_file)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut agent = spawn();
    // SIGKILL once a quarter is in the log, while the rest is being sent.
    platform.logged(thing, total / 4).await;
    agent.kill().await.unwrap();
    let at_kill = platform.logged(thing, total / 4).await.len();
    assert!(
        at_kill < total,
        "killed mid-upload ({at_kill} of {total} logged)"
    );
    let mut agent = spawn();
    let logged = platform.logged(thing, total).await;
    // Every reading reached the log, numbered without a gap (each start of the agent also takes
    // a sample of its own, numbered after the filled ones).
    let distinct: std::collections::BTreeSet<u64> = logged.iter().copied().collect();
    let highest = *distinct.last().unwrap();
    assert!(highest >= u64::try_from(total).unwrap());
    assert_eq!(
        u64::try_from(distinct.len()).unwrap(),
        highest,
        "no reading is missing"
    );
    // Readings resent after the kill may stand twice in the log; consumers count each
    // (thing, seq) once (the processing tests prove it). The agent stops cleanly, and its outbox
    // is empty once everything was acknowledged.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sipmba_testkit::signal(agent.id().unwrap(), sipmba_testkit::Signal::TERM);
        assert!(
            agent.wait().await.unwrap().success(),
            "a clean exit on SIGTERM"
        );
        let outbox = sipmba_edge::outbox::Outbox::open(
            &dir.path().join("state"),
            1_000_000,
            sipmba_edge::config::WhenFull::DropOldest,
        )
        .unwrap();
        if outbox.depth().unwrap() == 0 {
            break;
        }
        drop(outbox);
        assert!(
            std::time::Instant::now() < deadline,
            "the outbox never emptied"
        );
        agent = spawn();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_and_missing_hardware_get_a_clear_message_and_no_crash_loop() {
    let bin = env!("CARGO_BIN_EXE_sipmba-edge");
    let dir = tempfile::tempdir().unwrap();
    // A bad key: exit code 2 (the systemd unit does not restart on it), naming the key.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[sensors]]\nkind = \"bme280\"\naddress = 0x10\n").unwrap();
    let out = tokio::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid setting `sensors[0].address`") && stderr.contains("0x76 or 0x77"),
        "{stderr}"
    );
    // Hardware this machine does not have: the agent says what to check, keeps running with
    // the rest, and stops cleanly.
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\nsample_interval_secs = 1\n\
             [[sensors]]\nkind = \"gpio_input\"\npin = 17\nmetric = \"door\"\n\
             [[sensors]]\nkind = \"simulated\"\nmetric = \"t\"\nmin = 0\nmax = 1\n\
             [[outputs]]\nname = \"fan\"\npin = 27\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = child.id().expect("still running");
    sipmba_testkit::signal(pid, sipmba_testkit::Signal::TERM);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "a clean stop");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("GPIO is not available"), "{stderr}");
    assert_eq!(
        stderr.matches("sensor unavailable").count(),
        1,
        "said once, not at every sample: {stderr}"
    );
    // The simulated sensor went on sampling.
    let outbox = sipmba_edge::outbox::Outbox::open(
        &dir.path().join("state"),
        100,
        sipmba_edge::config::WhenFull::DropOldest,
    )
    .unwrap();
    assert!(outbox.depth().unwrap() >= 2);
}
