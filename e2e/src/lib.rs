//! What the end-to-end runs share.
#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end runs fail loudly

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use sipmba_proto::v1 as pb;
use sipmba_testkit::with_token;
use tokio::{
    net::{TcpListener, TcpStream},
    process::Child,
};
use tonic::transport::Channel;

/// A device's reading now, numbered `seq`: `temperature`, `humidity` and `pressure` as numbers.
pub fn reading(seq: u64, [temperature, humidity, pressure]: [f64; 3]) -> pb::Reading {
    let at = sipmba_runtime::ids::now_ms();
    pb::Reading {
        seq,
        device_time: Some(sipmba_runtime::ids::timestamp_from_ms(at)),
        metrics: [
            ("temperature", temperature),
            ("humidity", humidity),
            ("pressure", pressure),
        ]
        .into_iter()
        .map(|(name, value)| pb::Metric {
            name: name.into(),
            value: Some(pb::metric::Value::Number(value)),
            unit: String::new(),
        })
        .collect(),
        payload: vec![],
    }
}

/// A session frame.
pub fn frame(frame: pb::session_request::Frame) -> pb::SessionRequest {
    pb::SessionRequest { frame: Some(frame) }
}

/// A TCP proxy that counts the bytes passing in both directions.
pub struct CountingProxy {
    /// Where it listens.
    pub addr: String,
    bytes: Arc<AtomicU64>,
}

impl CountingProxy {
    /// Forwards connections accepted on `listener` to `target`.
    pub async fn start(listener: TcpListener, target: String) -> Self {
        let addr = listener.local_addr().unwrap().to_string();
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = bytes.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (target, counter) = (target.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (mut ri, mut wi) = inbound.split();
                    let (mut ro, mut wo) = outbound.split();
                    let up = copy_counting(&mut ri, &mut wo, &counter);
                    let down = copy_counting(&mut ro, &mut wi, &counter);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Self { addr, bytes }
    }

    /// Bytes forwarded so far, both directions.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

async fn copy_counting(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    counter: &AtomicU64,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        to.write_all(&buf[..n]).await?;
    }
}

/// A loopback port nothing listens on (yet).
pub fn free_port() -> u16 {
    sipmba_testkit::free_port_pair()
}

/// Sends SIGTERM to `child` and expects a clean exit within 30 s.
pub async fn sigterm(mut child: Child, what: &str) -> anyhow::Result<()> {
    let status = sipmba_testkit::sigterm(&mut child, Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    if !status.success() {
        bail!("{what} exited with {status} after SIGTERM");
    }
    Ok(())
}

/// A token from the platform's sso.
pub async fn token(
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

/// `sipmba server --dev` in a temporary directory, with a user (password login) and one thing of
/// its own whose token is ready.
pub struct DevPlatform {
    /// Where the platform listens.
    pub listen: String,
    /// A channel to it.
    pub channel: Channel,
    /// The user's access token.
    pub user: String,
    /// The thing.
    pub thing: pb::ThingId,
    /// The thing's token (client_credentials).
    pub thing_token: pb::TokenResponse,
    /// The thing's client id.
    pub client_id: String,
    /// The thing's client secret.
    pub client_secret: String,
    dev: sipmba_testkit::DevServer,
}

impl DevPlatform {
    /// Starts the `server` binary with `--dev` and sets up the user and the thing.
    pub async fn start(server: &Path, deadline: Instant) -> anyhow::Result<Self> {
        Self::start_with(server, deadline, &[]).await
    }

    /// As [`DevPlatform::start`], with more arguments for the server (e.g. `--brokers`).
    pub async fn start_with(
        server: &Path,
        deadline: Instant,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let server = &std::fs::canonicalize(server)
            .with_context(|| format!("the server binary {}", server.display()))?;
        let dev = sipmba_testkit::DevServer::start(
            server,
            sipmba_testkit::DevOptions {
                args: args.iter().map(|a| (*a).to_owned()).collect(),
                log: Some("warn".into()),
                ..Default::default()
            },
        );
        let serving = dev.serving(&[
            "sipmba.v1.CollectService",
            "sipmba.v1.ControlService",
            "sipmba.v1.TelemetryService",
        ]);
        let channel =
            tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), serving)
                .await
                .context("the platform's services are not serving")?;
        let admin = dev.admin_token().await;

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
                client_secret: secret.client_secret.clone(),
                scope: String::new(),
            }),
        )
        .await?;
        Ok(Self {
            channel,
            user,
            thing: thing_id,
            thing_token,
            client_id: secret.client_id,
            client_secret: secret.client_secret,
            listen: dev.listen.clone(),
            dev,
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.dev.pid()
    }

    /// The platform's working directory (and a place for the agent's files).
    pub fn dir(&self) -> &Path {
        &self.dev.dir
    }

    /// Stops the platform (SIGTERM, clean exit).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        match self.dev.stop().await {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => bail!("the platform exited with {status}"),
            Err(e) => bail!("the platform: {e}"),
        }
    }
}

/// CPU time and resident memory of a live process, from `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct ProcStats {
    /// User and system CPU time so far.
    pub cpu: Duration,
    /// Resident memory now (KiB).
    pub rss_kib: u64,
    /// Peak resident memory (KiB).
    pub peak_kib: u64,
    /// Threads of the process now.
    pub threads: u64,
}

impl ProcStats {
    /// The figures of process `pid` now.
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("process {pid} is gone"))?;
        // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
        let rest = stat.rsplit_once(')').context("stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        let hz = rustix::param::clock_ticks_per_second();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Self {
            cpu: Duration::from_millis(ticks * 1000 / hz),
            rss_kib: field("VmRSS:"),
            peak_kib: field("VmHWM:"),
            threads: field("Threads:"),
        })
    }
}

/// The machine's CPU time so far, from the first line of `/proc/stat` (every core).
#[derive(Clone, Copy, Debug)]
pub struct MachineCpu {
    /// Ticks spent running anything: user, nice, system, irq, softirq, steal.
    pub busy: u64,
    /// Ticks in all, idle and waiting for I/O included.
    pub total: u64,
}

impl MachineCpu {
    pub fn now() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().context("/proc/stat is empty")?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("/proc/stat: {line}"))?;
        let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks[..] else {
            anyhow::bail!("/proc/stat: {line}");
        };
        let busy = user + nice + system + irq + softirq + steal;
        Ok(Self {
            busy,
            total: busy + idle + iowait,
        })
    }

    /// The share of all the machine's cores busy since `earlier` (%).
    pub fn busy_percent_since(&self, earlier: &Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total).max(1);
        100.0 * self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}

/// How many files process `pid` holds open whose path `pick` selects (its `/proc/<pid>/fd`).
pub fn open_files(pid: u32, pick: &dyn Fn(&std::path::Path) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| pick(target))
        .count()
}

/// Raises this process's open-file limit (soft and hard, as root may) to at least `files`; the
/// processes it starts inherit it. Returns the limit in force.
pub fn raise_file_limit(files: u64) -> anyhow::Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    if now.current.is_some_and(|c| c >= files) {
        return Ok(now.current.unwrap_or(files));
    }
    let hard = now.maximum.map_or(files, |m| m.max(files));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(files),
            maximum: Some(hard),
        },
    )
    .or_else(|_| {
        // Not allowed above the hard limit: take what it allows.
        let maximum = now.maximum;
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: maximum,
                maximum,
            },
        )
    })
    .context("raising the open-file limit")?;
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(files))
}

/// Mosquitto on a free loopback port, with its defaults otherwise (no persistence, anonymous
/// clients); it dies with this process and is killed on drop.
pub struct Mosquitto {
    /// Its port.
    pub port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts it (installed by `.ci/setup mosquitto`) and waits until it listens.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )?;
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|b| Path::new(b).exists())
            .unwrap_or("mosquitto");
        let child = sipmba_testkit::tied_command(Path::new(bin))
            .arg("-c")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("cannot start mosquitto ({e}): run .ci/setup mosquitto")
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            port,
            child,
            _dir: dir,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
