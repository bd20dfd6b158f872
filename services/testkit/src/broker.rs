//! Kafka-protocol brokers for tests: Apache Kafka (the engine production runs) or tansu (the
//! embedded broker of `sipmba server --dev`), chosen by `SIPMBA_TEST_BROKER=kafka|tansu`.
//!
//! The default is `kafka`: the platform's log in a cluster is Kafka or Redpanda, so the suite
//! proves our code against the real thing; tansu stays covered by the tests of `--dev`, which
//! start it as users do. `.ci/test` starts one Kafka broker for the whole run and names it in
//! `SIPMBA_TEST_KAFKA`; [`TestBroker::start`] then hands every test that broker with a topic
//! prefix of its own (a JVM start per test would cost seconds each). Tests that kill or restart
//! their broker take one of their own ([`TestBroker::start_own`]), and fault tests take a
//! [`KafkaCluster`] of three nodes.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use uuid::Uuid;

use crate::free_port_pair;

/// Which broker the tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Apache Kafka (KRaft), from `.ci/kafka`.
    Kafka,
    /// tansu, on the PATH or named by `SIPMBA_TANSU`.
    Tansu,
}

impl Flavour {
    /// `SIPMBA_TEST_BROKER` (`kafka`, the default, or `tansu`).
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var("SIPMBA_TEST_BROKER").as_deref() {
            Err(_) | Ok("" | "kafka") => Ok(Self::Kafka),
            Ok("tansu") => Ok(Self::Tansu),
            Ok(other) => anyhow::bail!("SIPMBA_TEST_BROKER={other}: expected `kafka` or `tansu`"),
        }
    }
}

/// A broker for one test. Its topics carry [`TestBroker::prefix`], unique to the test, so that
/// tests sharing a broker never see each other's records.
#[derive(Debug)]
pub struct TestBroker {
    /// `127.0.0.1:<port>` of the (first) broker.
    pub addr: String,
    /// A topic prefix unique to this broker's test, so that topics never collide.
    pub prefix: String,
    /// Which broker this is.
    pub flavour: Flavour,
    process: Process,
}

#[derive(Debug)]
enum Process {
    /// The run's shared Kafka (`SIPMBA_TEST_KAFKA`): started and stopped by `.ci/test`.
    Shared,
    Kafka(KafkaCluster),
    Tansu(Tansu),
}

impl TestBroker {
    /// A broker of the flavour `SIPMBA_TEST_BROKER` names: the run's shared Kafka when
    /// `SIPMBA_TEST_KAFKA` names one, else a broker of this test's own.
    pub async fn start() -> anyhow::Result<Self> {
        let flavour = Flavour::from_env()?;
        if flavour == Flavour::Kafka
            && let Some(shared) = std::env::var("SIPMBA_TEST_KAFKA")
                .ok()
                .filter(|s| !s.is_empty())
        {
            let addr = shared.split(',').next().unwrap_or_default().to_owned();
            return Ok(Self {
                addr,
                prefix: unique_prefix(),
                flavour,
                process: Process::Shared,
            });
        }
        Self::start_own_of(flavour).await
    }

    /// A broker process of this test's own (it may [`kill`](Self::kill) and
    /// [`restart`](Self::restart) it), of the flavour `SIPMBA_TEST_BROKER` names.
    pub async fn start_own() -> anyhow::Result<Self> {
        Self::start_own_of(Flavour::from_env()?).await
    }

    /// A broker process of this test's own, of `flavour`.
    pub async fn start_own_of(flavour: Flavour) -> anyhow::Result<Self> {
        match flavour {
            Flavour::Kafka => Self::start_cluster(1).await,
            Flavour::Tansu => Self::start_tansu("sqlite://tansu.db", None).await,
        }
    }

    /// A Kafka cluster of this test's own with `nodes` nodes (1 or 3), for fault tests
    /// ([`TestBroker::cluster`]).
    pub async fn start_cluster(nodes: usize) -> anyhow::Result<Self> {
        let cluster = KafkaCluster::start(nodes).await?;
        Ok(Self {
            addr: cluster.bootstrap[0].clone(),
            prefix: unique_prefix(),
            flavour: Flavour::Kafka,
            process: Process::Kafka(cluster),
        })
    }

    /// The Kafka cluster of this test's own, if it has one.
    pub fn cluster(&mut self) -> Option<&mut KafkaCluster> {
        match &mut self.process {
            Process::Kafka(cluster) => Some(cluster),
            _ => None,
        }
    }

    /// A tansu broker with another storage URL, e.g. `memory://tansu/` for benchmarks (tansu
    /// 0.6's memory storage has offset bugs: never use it for correctness tests), telling clients
    /// to connect through `advertised` (`host:port` of a proxy in front of it) if given.
    pub async fn start_tansu(storage: &str, advertised: Option<String>) -> anyhow::Result<Self> {
        let tansu = Tansu::start(storage, advertised).await?;
        Ok(Self {
            addr: tansu.addr.clone(),
            prefix: unique_prefix(),
            flavour: Flavour::Tansu,
            process: Process::Tansu(tansu),
        })
    }

    /// The bootstrap brokers (`host:port`), for `queue.brokers`.
    pub fn brokers(&self) -> Vec<String> {
        match &self.process {
            Process::Kafka(cluster) => cluster.bootstrap.clone(),
            _ => vec![self.addr.clone()],
        }
    }

    /// The `[queue]` section of a `sipmba server` configuration file that uses this broker.
    pub fn queue_toml(&self) -> String {
        let brokers = self
            .brokers()
            .iter()
            .map(|b| format!("\"{b}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "[queue]\nbrokers = [{brokers}]\ntopic_prefix = \"{}\"\n",
            self.prefix
        )
    }

    /// Kills the broker (SIGKILL); its data stays for [`TestBroker::restart`].
    ///
    /// # Panics
    /// On the run's shared broker: take one with [`TestBroker::start_own`] to kill it.
    pub fn kill(&mut self) {
        match &mut self.process {
            Process::Shared => panic!("the run's shared broker cannot be killed: use start_own"),
            Process::Kafka(cluster) => cluster.kill(0),
            Process::Tansu(tansu) => tansu.kill(),
        }
    }

    /// Starts the broker again on the same port and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        match &mut self.process {
            Process::Shared => anyhow::bail!("the run's shared broker cannot be restarted"),
            Process::Kafka(cluster) => cluster.restart(0).await,
            Process::Tansu(tansu) => {
                tansu.kill();
                tansu.spawn()?;
                tansu.wait_ready().await
            }
        }
    }
}

fn unique_prefix() -> String {
    format!("t{}.", Uuid::new_v4().simple())
}

/// The repository's root (for `.ci/kafka` and `e2e/kafka`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A command for `program` that dies with this process: run through `setpriv --pdeathsig KILL`
/// where util-linux offers it (setpriv execs `program`, so the child's pid is the program's), so
/// that a test or benchmark killed by its runner leaves nothing behind.
pub fn tied_command(program: &Path) -> Command {
    let setpriv = Path::new("/usr/bin/setpriv");
    if setpriv.exists() {
        let mut c = Command::new(setpriv);
        c.args(["--pdeathsig", "KILL", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Starts `program` with [`tied_command`], its output discarded.
fn spawn_tied(program: &Path, args: &[&str], dir: &Path) -> std::io::Result<Child> {
    tied_command(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// A tansu process with SQLite (or other) storage in a temporary directory.
#[derive(Debug)]
struct Tansu {
    addr: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
    storage: String,
    advertised: Option<String>,
}

impl Tansu {
    async fn start(storage: &str, advertised: Option<String>) -> anyhow::Result<Self> {
        let mut tansu = Self {
            addr: format!("127.0.0.1:{}", free_port_pair()),
            child: None,
            dir: tempfile::tempdir()?,
            storage: storage.to_owned(),
            advertised,
        };
        tansu.spawn()?;
        tansu.wait_ready().await?;
        Ok(tansu)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = std::env::var("SIPMBA_TANSU").unwrap_or_else(|_| "tansu".to_owned());
        let url = format!("tcp://{}", self.addr);
        let advertised = format!("tcp://{}", self.advertised.as_ref().unwrap_or(&self.addr));
        let child = spawn_tied(
            Path::new(&bin),
            &[
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
                "--storage-engine",
                &self.storage,
            ],
            self.dir.path(),
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot start tansu `{bin}` ({e}); run .ci/setup tansu, which installs it"
            )
        })?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(&self.addr).await.is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "tansu did not listen on {}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An Apache Kafka cluster of one or three KRaft nodes (each broker and controller at once) on
/// loopback, with its data in a temporary directory; every node is killed on drop. Configured
/// and run by `.ci/kafka` (`configure`, then `node` per node), so the broker's settings have one
/// owner: `e2e/kafka/server.properties`. Kafka must be installed (`.ci/setup kafka`).
#[derive(Debug)]
pub struct KafkaCluster {
    /// `127.0.0.1:<port>` of each node, in node order (node ids are index + 1).
    pub bootstrap: Vec<String>,
    nodes: Vec<Option<Child>>,
    dir: tempfile::TempDir,
    /// How this harness reaches the brokers (to see that they serve).
    security: sipmba_queue::Security,
}

/// What the brokers of a SASL_SSL cluster show and accept.
#[derive(Debug, Clone)]
struct BrokerSecrets {
    /// PEM of the CA that signed the brokers' certificate (their truststore too).
    ca_pem: String,
    /// PEM of the brokers' certificate chain (for 127.0.0.1).
    cert_pem: String,
    /// PEM of its private key (PKCS #8).
    key_pem: String,
    /// The SASL user (SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN).
    user: String,
    /// Its password.
    password: String,
}

impl KafkaCluster {
    /// Configures, formats and starts `nodes` nodes (1 or 3), and waits until every one serves.
    pub async fn start(nodes: usize) -> anyhow::Result<Self> {
        Self::start_in(nodes, None, sipmba_queue::Security::default()).await
    }

    /// A one-node cluster whose broker speaks SASL_SSL only (SCRAM-SHA-512, SCRAM-SHA-256 and
    /// PLAIN for `user` with `password`), with a certificate for 127.0.0.1 from a fresh CA;
    /// returns it and the CA's PEM.
    pub async fn start_sasl_ssl(user: &str, password: &str) -> anyhow::Result<(Self, String)> {
        let (ca_pem, cert_pem, key_pem) = crate::test_ca();
        let secrets = BrokerSecrets {
            ca_pem: ca_pem.clone(),
            cert_pem,
            key_pem,
            user: user.to_owned(),
            password: password.to_owned(),
        };
        let security = sipmba_queue::Security {
            tls: Some(
                sipmba_queue::Security::tls_config(ca_pem.as_bytes(), None)
                    .map_err(anyhow::Error::msg)?,
            ),
            sasl: Some(sipmba_queue::Sasl {
                mechanism: sipmba_queue::Mechanism::ScramSha512,
                username: user.to_owned(),
                password: password.to_owned(),
            }),
        };
        Ok((Self::start_in(1, Some(&secrets), security).await?, ca_pem))
    }

    async fn start_in(
        nodes: usize,
        secrets: Option<&BrokerSecrets>,
        security: sipmba_queue::Security,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("sipmba-kafka-").tempdir()?;
        if let Some(secrets) = secrets {
            let secure = dir.path().join("secure");
            std::fs::create_dir(&secure)?;
            std::fs::write(secure.join("ca.crt"), &secrets.ca_pem)?;
            std::fs::write(
                secure.join("broker.pem"),
                format!("{}\n{}", secrets.key_pem, secrets.cert_pem),
            )?;
            std::fs::write(
                secure.join("scram"),
                format!("{} {}\n", secrets.user, secrets.password),
            )?;
        }
        let script = repo_root().join(".ci/kafka");
        let out = tokio::process::Command::new(&script)
            .arg("configure")
            .arg(dir.path())
            .arg(nodes.to_string())
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", script.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "configuring Kafka failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let bootstrap = String::from_utf8(out.stdout)?
            .trim()
            .split(',')
            .map(str::to_owned)
            .collect::<Vec<_>>();
        anyhow::ensure!(
            bootstrap.len() == nodes,
            "expected {nodes} brokers: {bootstrap:?}"
        );
        let mut cluster = Self {
            bootstrap,
            nodes: (0..nodes).map(|_| None).collect(),
            dir,
            security,
        };
        for node in 0..nodes {
            cluster.spawn(node)?;
        }
        for node in 0..nodes {
            cluster.wait_serving(node).await?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, node: usize) -> anyhow::Result<()> {
        let script = repo_root().join(".ci/kafka");
        let dir = self.dir.path().to_string_lossy().into_owned();
        let id = (node + 1).to_string();
        let child = spawn_tied(&script, &["node", &dir, &id], self.dir.path())
            .map_err(|e| anyhow::anyhow!("cannot start Kafka node {id}: {e}"))?;
        self.nodes[node] = Some(child);
        Ok(())
    }

    /// Waits until `node` answers Metadata listing every node of the cluster and a controller.
    async fn wait_serving(&mut self, node: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let addr = self.bootstrap[node].clone();
        loop {
            if let Some(child) = self.nodes[node].as_mut()
                && let Some(status) = child.try_wait()?
            {
                anyhow::bail!(
                    "Kafka node {} exited ({status}); its log:\n{}",
                    node + 1,
                    self.log_tail(node)
                );
            }
            let target = sipmba_queue::admin::Target {
                addr: &addr,
                security: &self.security,
            };
            let last = match sipmba_queue::admin::metadata(target, &[]).await {
                Ok(m) if m.brokers.len() == self.nodes.len() && m.controller >= 0 => return Ok(()),
                Ok(m) => format!("{} of {} brokers known", m.brokers.len(), self.nodes.len()),
                Err(e) => e.to_string(),
            };
            anyhow::ensure!(
                Instant::now() < deadline,
                "Kafka node {} did not serve on {addr} in 90 s ({last}); its log:\n{}",
                node + 1,
                self.log_tail(node)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_tail(&self, node: usize) -> String {
        let path = self
            .dir
            .path()
            .join(format!("node-{}/server.log", node + 1));
        let log = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The process id of `node` (0-based), while it runs.
    pub fn pid(&self, node: usize) -> Option<u32> {
        self.nodes[node].as_ref().map(Child::id)
    }

    /// The node (0-based) whose broker listens on `addr`.
    pub fn node_of(&self, addr: &str) -> Option<usize> {
        self.bootstrap.iter().position(|b| b == addr)
    }

    /// SIGKILL to `node`: a crash. Its data stays for [`KafkaCluster::restart`].
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM to `node` and wait until it has stopped (a controlled shutdown), SIGKILL after 30 s.
    pub async fn stop(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].take() {
            self.signal_pid(child.id(), rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP to `node`: hung, not dead (its connections stay open and unanswered).
    pub fn pause(&self, node: usize) {
        if let Some(pid) = self.pid(node) {
            self.signal_pid(pid, rustix::process::Signal::STOP);
        }
    }

    /// SIGCONT to a paused `node`.
    pub fn resume(&self, node: usize) {
        if let Some(pid) = self.pid(node) {
            self.signal_pid(pid, rustix::process::Signal::CONT);
        }
    }

    fn signal_pid(&self, pid: u32, signal: rustix::process::Signal) {
        // The child is `setpriv`, which has exec'd the script, which has exec'd java: one pid.
        if let Some(pid) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// Starts `node` again on its port and data (killing it first if it runs) and waits until
    /// it serves.
    pub async fn restart(&mut self, node: usize) -> anyhow::Result<()> {
        self.kill(node);
        self.spawn(node)?;
        self.wait_serving(node).await
    }
}

impl KafkaCluster {
    /// Stops every node (SIGTERM, one after another, as an operator restarting a cluster does).
    pub async fn stop_all(&mut self) {
        for node in 0..self.nodes.len() {
            self.stop(node).await;
        }
    }

    /// Starts every stopped node again on its data and waits until all serve (they need each
    /// other: a controller quorum is two of three).
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        for node in 0..self.nodes.len() {
            if self.nodes[node].is_none() {
                self.spawn(node)?;
            }
        }
        for node in 0..self.nodes.len() {
            self.wait_serving(node).await?;
        }
        self.wait_replicated().await
    }

    /// Waits (90 s at most) until every partition of the cluster has a leader and all its
    /// replicas in sync: the cluster is back, not only its brokers.
    pub async fn wait_replicated(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let target = sipmba_queue::admin::Target {
                addr: &self.bootstrap[0],
                security: &self.security,
            };
            let lagging = match sipmba_queue::admin::metadata_of_all(target).await {
                Ok(m) => m
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
                    .filter(|(_, p)| p.leader < 0 || p.in_sync.len() < p.replicas.len())
                    .map(|(t, p)| format!("{}/{}", t.name, p.partition))
                    .collect::<Vec<_>>(),
                Err(e) => vec![e.to_string()],
            };
            if lagging.is_empty() {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "partitions still without a leader or with replicas out of sync: {lagging:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for node in 0..self.nodes.len() {
            self.kill(node);
        }
    }
}
