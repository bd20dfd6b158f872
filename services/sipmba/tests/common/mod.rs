//! What the process-level tests share: the `sipmba` binary started, connected to and stopped,
//! a thing that streams through broken sessions, the telemetry topic read back, and a collect
//! process with its broker.
#![allow(dead_code)] // each test binary uses a part

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use sipmba_proto::v1 as pb;
use sipmba_testkit::{TestIssuer, serve_jwks, with_token};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_sipmba");

pub fn free_port() -> u16 {
    sipmba_testkit::free_port_pair()
}

pub fn spawn(args: &[&str], dir: &Path) -> Child {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .env_remove("SIPMBA_CONFIG")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start sipmba")
}

pub async fn run_to_end(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Connects once the process listens.
pub async fn connect(endpoint: Endpoint) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(e) => {
                assert!(Instant::now() < deadline, "server did not come up: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub async fn health(channel: &Channel, service: &str) -> ServingStatus {
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

pub async fn wait_for_health(channel: &Channel, service: &str, want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while health(channel, service).await != want {
        assert!(
            Instant::now() < deadline,
            "{service:?} never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `sipmba server --dev` in `dir` on `port` (logging at info), with `args` after `--listen`.
#[allow(dead_code)] // not every test binary starts one
pub fn dev(dir: &Path, port: u16, args: &[&str]) -> sipmba_testkit::DevServer {
    sipmba_testkit::DevServer::start(
        Path::new(BIN),
        sipmba_testkit::DevOptions {
            dir: Some(dir.to_path_buf()),
            port: Some(port),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            log: Some("info".into()),
            ..Default::default()
        },
    )
}

/// SIGTERM to a dev server, and a clean exit.
#[allow(dead_code)] // not every test binary starts one
pub async fn stop_dev(mut dev: sipmba_testkit::DevServer) {
    let exit = dev
        .stop()
        .await
        .unwrap_or_else(|e| panic!("exits after SIGTERM: {e}"));
    assert!(exit.success(), "clean exit after SIGTERM, got {exit}");
}

pub async fn sigterm_and_wait(mut child: Child) {
    let exit = sipmba_testkit::sigterm(&mut child, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("exits after SIGTERM: {e}"));
    assert!(exit.success(), "clean exit after SIGTERM, got {exit}");
}

/// A thing that streams readings `1..=total` in batches, resuming from the server's
/// acknowledged position after every broken session, like the edge agent with its outbox.
/// Returns the highest seq acknowledged before each break.
pub async fn stream_through_breaks(
    endpoint: Endpoint,
    token: String,
    total: u64,
    on_ack: impl Fn(u64) + Send + 'static,
) -> Vec<u64> {
    use pb::{collect_service_client::CollectServiceClient, session_request, session_response};
    let mut acked_before_breaks = Vec::new();
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked < total {
        assert!(Instant::now() < deadline, "stuck at {acked} of {total}");
        let Ok(channel) = endpoint.connect().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let hello = session_request::Frame::Hello(session_request::Hello {
            agent_version: "test".into(),
            last_acked_seq: Some(acked),
            max_commands: 0,
        });
        tx.send(pb::SessionRequest { frame: Some(hello) })
            .await
            .unwrap();
        let Ok(response) = CollectServiceClient::new(channel)
            .session(with_token(
                &token,
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut inbound = response.into_inner();
        let broke = async {
            let welcome = match inbound.message().await {
                Ok(Some(pb::SessionResponse {
                    frame: Some(session_response::Frame::Welcome(w)),
                })) => w,
                _ => return,
            };
            // The server's position is authoritative; it never forgets an acknowledgement.
            assert!(
                welcome.acked_seq >= acked,
                "acknowledged {acked}, then welcomed at {}",
                welcome.acked_seq
            );
            acked = welcome.acked_seq;
            while acked < total {
                let from = acked + 1;
                let to = (acked + 100).min(total);
                let readings = (from..=to)
                    .map(|seq| pb::Reading {
                        seq,
                        device_time: None,
                        metrics: vec![],
                        payload: vec![1, 2, 3],
                    })
                    .collect();
                let batch =
                    session_request::Frame::Telemetry(session_request::TelemetryBatch { readings });
                if tx
                    .send(pb::SessionRequest { frame: Some(batch) })
                    .await
                    .is_err()
                {
                    return;
                }
                match inbound.message().await {
                    Ok(Some(pb::SessionResponse {
                        frame: Some(session_response::Frame::Ack(a)),
                    })) => {
                        assert!(a.acked_seq >= acked);
                        acked = a.acked_seq;
                        on_ack(acked);
                    }
                    _ => return,
                }
            }
        };
        broke.await;
        if acked < total {
            acked_before_breaks.push(acked);
        }
    }
    acked_before_breaks
}

/// Every seq of `thing` in the telemetry topic (all partitions), once `expected` distinct ones
/// are there.
pub async fn telemetry_seqs(
    queue: &sipmba_queue::Queue,
    thing: uuid::Uuid,
    expected: usize,
) -> std::collections::BTreeSet<u64> {
    use prost::Message;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let partitions = queue
        .partition_count(sipmba_collect::TELEMETRY_TOPIC)
        .await
        .unwrap();
    for partition in 0..partitions {
        let client = queue
            .partition(sipmba_collect::TELEMETRY_TOPIC, partition)
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
                    seen.lock().unwrap().insert(record.reading.unwrap().seq);
                }
            },
            || {},
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < expected {
        assert!(
            Instant::now() < deadline,
            "found {} of {expected}",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(true).unwrap();
    seen.lock().unwrap().clone()
}

pub fn thing_token(issuer: &TestIssuer, thing: uuid::Uuid) -> String {
    issuer.thing_token(thing, uuid::Uuid::new_v4())
}

/// A `sipmba server --target collect` process with its broker and key set, a thing streaming
/// through it, and, when asked, a processing process storing what it logs.
pub struct CollectProcess {
    pub broker: sipmba_testkit::TestBroker,
    pub issuer: TestIssuer,
    pub args: Vec<String>,
    pub listen: String,
    pub dir: tempfile::TempDir,
    _jwks: sipmba_testkit::JwksServer,
}

impl CollectProcess {
    /// Collect on `broker` (not started yet: [`CollectProcess::spawn`]).
    pub async fn new(broker: sipmba_testkit::TestBroker) -> Self {
        let issuer = TestIssuer::new();
        let (jwks_url, jwks) = serve_jwks(serde_json::to_value(issuer.key.jwks()).unwrap())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sipmba.toml"), broker.queue_toml()).unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let args = [
            "server",
            "--target",
            "collect",
            "--plaintext",
            "--config",
            "sipmba.toml",
            "--listen",
            &listen,
            "--database-url",
            "sqlite://collect.db",
            "--jwks-url",
            &jwks_url,
            "--issuer",
            &issuer.issuer,
        ]
        .map(str::to_owned)
        .to_vec();
        Self {
            broker,
            issuer,
            args,
            listen,
            dir,
            _jwks: jwks,
        }
    }

    pub fn spawn(&self) -> Child {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        spawn(&args, self.dir.path())
    }

    /// The arguments of a processing process beside collect, on its own database. It reaches
    /// Objects, sso and Control only when a rule needs them (none here), so their addresses lead
    /// nowhere. Collect takes any rate. Call before [`CollectProcess::spawn`].
    pub fn processing_args(&self) -> Vec<String> {
        let dir = self.dir.path();
        std::fs::write(dir.join("processing.secret"), "unused").unwrap();
        let mut config = std::fs::read_to_string(dir.join("sipmba.toml")).unwrap();
        config.push_str(
            "[processing]\nobjects_url = \"http://127.0.0.1:9\"\ntoken_url = \"http://127.0.0.1:9/oauth2/token\"\n\
             control_url = \"http://127.0.0.1:9\"\nclient_secret_file = \"processing.secret\"\n\
             [collect]\nreadings_per_second = 1000000\nburst_readings = 1000000\n",
        );
        std::fs::write(dir.join("sipmba.toml"), config).unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = self.args.clone();
        for (flag, value) in [
            ("--target", "processing"),
            ("--listen", listen.as_str()),
            ("--database-url", "sqlite://processing.db"),
        ] {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1] = value.to_owned();
        }
        args
    }

    /// How many readings of `thing` processing has stored, once at least `at_least` (two minutes
    /// at most).
    pub async fn stored(&self, thing: uuid::Uuid, at_least: u64) -> u64 {
        let db = self.dir.path().join("processing.db");
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut n = 0;
        loop {
            if let Ok(conn) =
                sipmba_runtime::db::connect(&format!("sqlite://{}", db.display()), 1).await
                && let Ok(count) = sipmba_processing::store::Store::new(conn.clone())
                    .count(thing)
                    .await
            {
                conn.close().await.ok();
                n = count;
                if n >= at_least {
                    return n;
                }
            }
            assert!(
                Instant::now() < deadline,
                "processing stored {n} of {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Streams readings `1..=total` of a new thing in the background; returns the thing, the
    /// sender and its acknowledged progress.
    pub fn stream(
        &self,
        total: u64,
    ) -> (
        uuid::Uuid,
        tokio::task::JoinHandle<Vec<u64>>,
        std::sync::Arc<Progress>,
    ) {
        let thing = uuid::Uuid::new_v4();
        let endpoint = Endpoint::from_shared(format!("http://{}", self.listen)).unwrap();
        let progress = std::sync::Arc::new(Progress::default());
        let seen = progress.clone();
        let sender = tokio::spawn(stream_through_breaks(
            endpoint,
            thing_token(&self.issuer, thing),
            total,
            move |acked| seen.saw(acked),
        ));
        (thing, sender, progress)
    }

    /// A connection to the log.
    pub async fn queue(&self) -> sipmba_queue::Queue {
        sipmba_queue::Queue::connect(&self.broker.brokers(), &self.broker.prefix)
            .await
            .unwrap()
    }

    /// Every seq of `thing` in the log, once `total` are there.
    pub async fn logged(&self, thing: uuid::Uuid, total: u64) -> std::collections::BTreeSet<u64> {
        telemetry_seqs(&self.queue().await, thing, total as usize).await
    }
}

/// A streaming thing's acknowledged position, and when each acknowledgement came.
#[derive(Debug, Default)]
pub struct Progress {
    acked: std::sync::atomic::AtomicU64,
    times: std::sync::Mutex<Vec<(Instant, u64)>>,
}

impl Progress {
    fn saw(&self, acked: u64) {
        self.acked
            .store(acked, std::sync::atomic::Ordering::Relaxed);
        self.times.lock().unwrap().push((Instant::now(), acked));
    }

    /// The highest seq acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The longest time without an acknowledgement from `since` on (the time since `since` if
    /// none came).
    pub fn longest_silence_after(&self, since: Instant) -> Duration {
        let times = self.times.lock().unwrap();
        let mut last = since;
        let mut longest: Option<Duration> = None;
        for (at, _) in times.iter().filter(|(at, _)| *at >= since) {
            longest = Some(longest.unwrap_or_default().max(at.duration_since(last)));
            last = *at;
        }
        longest.unwrap_or_else(|| since.elapsed())
    }
}

pub async fn until_acked(progress: &Progress, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.acked() < at_least {
        assert!(Instant::now() < deadline, "the stream never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
