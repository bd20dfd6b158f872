//! The log of `sipmba server --dev`: a tansu broker on the port after the server's, keeping its
//! data in `<data-dir>/broker` and its output in `<data-dir>/broker/tansu.log`.
//!
//! - It dies with the server however the server ends, `kill -9` included: it runs under
//!   `setpriv --pdeathsig KILL`, so the kernel kills it when its parent goes.
//! - When it dies while the server runs, it is started again (after 1 s, then up to 30 s apart
//!   while it keeps dying); meanwhile the services that write to the log report NOT_SERVING.
//! - A broker left on the port by an earlier server of the same data directory (one that ran
//!   without the parent-death signal) is stopped and replaced. Anything else on the port makes
//!   `--dev` refuse to start, naming the process that holds it.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sipmba_runtime::Shutdown;
use tokio::process::Child;

/// How long a started broker has to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The first pause before a restart; it doubles while the broker keeps dying, up to
/// [`MAX_RESTART_DELAY`], and starts over once a broker has run for a minute.
const RESTART_DELAY: Duration = Duration::from_secs(1);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// The running development broker.
#[derive(Debug)]
pub struct DevBroker {
    /// Where it listens (`127.0.0.1:<port>`).
    pub addr: String,
    up: Arc<AtomicBool>,
}

impl DevBroker {
    /// False while the broker is being restarted.
    pub fn up(&self) -> Arc<AtomicBool> {
        self.up.clone()
    }
}

/// The process that listens on a port, as `/proc` tells it.
#[derive(Debug)]
struct Holder {
    pid: i32,
    command: String,
    cwd: Option<PathBuf>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "process {} ({})", self.pid, self.command)
    }
}

/// Starts the broker of `data_dir` on the port after `listen`'s, and keeps it running until
/// `shutdown`; `changed` is notified whenever it goes down or comes back. The error says what
/// to do.
pub async fn start(
    data_dir: &Path,
    listen: std::net::SocketAddr,
    shutdown: Shutdown,
    changed: Arc<tokio::sync::Notify>,
) -> Result<DevBroker, String> {
    let port = listen.port().checked_add(1).ok_or_else(|| {
        format!(
            "--dev runs its broker on the port after the server's, and {} has none after it; \
             choose another --listen",
            listen
        )
    })?;
    let addr = format!("127.0.0.1:{port}");
    let bin = tansu()?;
    let dir = data_dir.join("broker");
    std::fs::create_dir_all(&dir).map_err(|e| {
        format!(
            "cannot create the broker's directory {}: {e}",
            dir.display()
        )
    })?;
    let dir = dir.canonicalize().unwrap_or(dir);
    take_port(port, &addr, &dir).await?;
    let child = spawn(&bin, &addr, &dir).await?;
    tracing::info!(addr, "started the development broker (tansu)");
    let up = Arc::new(AtomicBool::new(true));
    tokio::spawn(supervise(
        child,
        Spawn {
            bin,
            addr: addr.clone(),
            dir,
        },
        up.clone(),
        shutdown,
        changed,
    ));
    Ok(DevBroker { addr, up })
}

/// The tansu binary: `SIPMBA_TANSU`, or `tansu` on the PATH.
fn tansu() -> Result<PathBuf, String> {
    let bin = std::env::var("SIPMBA_TANSU").unwrap_or_else(|_| "tansu".to_owned());
    let found = if bin.contains('/') {
        Some(PathBuf::from(&bin)).filter(|p| p.is_file())
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(&bin))
                .find(|p| p.is_file())
        })
    };
    found.ok_or_else(|| {
        format!(
            "--dev runs its log on tansu, and `{bin}` is not installed: `.ci/setup tansu` \
             installs it (`.ci/dev` does it for you), or give --brokers of a running \
             Kafka-protocol log"
        )
    })
}

/// Makes sure nothing but this directory's own stale broker holds `port`, and stops that one.
async fn take_port(port: u16, addr: &str, dir: &Path) -> Result<(), String> {
    if tokio::net::TcpStream::connect(addr).await.is_err() {
        return Ok(());
    }
    let Some(holder) = holder(port) else {
        return Err(format!(
            "{addr}, where --dev runs its broker, is taken by another process (not one this user \
             may inspect); stop it, or move the platform with --listen 127.0.0.1:<port> (the \
             broker takes the port after it)"
        ));
    };
    let ours = holder.command.contains("tansu") && holder.cwd.as_deref() == Some(dir);
    if !ours {
        return Err(format!(
            "{addr}, where --dev runs its broker, is taken by {holder}; stop it, or move the \
             platform with --listen 127.0.0.1:<port> (the broker takes the port after it)"
        ));
    }
    tracing::warn!(
        pid = holder.pid,
        "a broker left behind by an earlier `--dev` of this data directory holds {addr}: stopping it"
    );
    let pid = rustix::process::Pid::from_raw(holder.pid)
        .ok_or_else(|| format!("{holder} has an invalid pid"))?;
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    for attempt in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return Ok(());
        }
        if attempt == 50 {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "{holder} still holds {addr} after SIGTERM and SIGKILL; stop it and start again"
    ))
}

/// Which process listens on TCP `port`, from `/proc/net/tcp{,6}` and the processes' sockets.
fn holder(port: u16) -> Option<Holder> {
    use procfs::net::TcpState;
    let mut entries = procfs::net::tcp().unwrap_or_default();
    entries.extend(procfs::net::tcp6().unwrap_or_default());
    let inodes: std::collections::HashSet<u64> = entries
        .into_iter()
        .filter(|e| e.state == TcpState::Listen && e.local_address.port() == port)
        .map(|e| e.inode)
        .collect();
    if inodes.is_empty() {
        return None;
    }
    for process in procfs::process::all_processes().ok()?.flatten() {
        let Ok(fds) = process.fd() else { continue };
        let listens = fds.flatten().any(|fd| {
            matches!(fd.target, procfs::process::FDTarget::Socket(inode) if inodes.contains(&inode))
        });
        if listens {
            let command = process
                .cmdline()
                .ok()
                .filter(|c| !c.is_empty())
                .map(|c| c.join(" "))
                .or_else(|| process.stat().ok().map(|s| s.comm))
                .unwrap_or_else(|| "unknown".into());
            return Some(Holder {
                pid: process.pid,
                command,
                cwd: process.cwd().ok(),
            });
        }
    }
    None
}

/// How to start the broker.
struct Spawn {
    bin: PathBuf,
    addr: String,
    dir: PathBuf,
}

/// Starts tansu under a parent-death signal and waits until it answers.
async fn spawn(bin: &Path, addr: &str, dir: &Path) -> Result<Child, String> {
    let log_path = dir.join("tansu.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
    let url = format!("tcp://{addr}");
    // `setpriv` (util-linux) sets the parent-death signal, then runs tansu in its place: the
    // kernel kills the broker when this process ends, however it ends.
    let mut child = tokio::process::Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--"])
        .arg(bin)
        .current_dir(dir)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "sqlite://tansu.db"])
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start {} under setpriv (util-linux): {e}",
                bin.display()
            )
        })?;
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the development broker exited at start ({status}); its output is in {}",
                log_path.display()
            ));
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(child);
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill().await;
            return Err(format!(
                "the development broker did not answer on {addr} within {} s; its output is in {}",
                START_TIMEOUT.as_secs(),
                log_path.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Restarts the broker whenever it exits, until `shutdown`.
async fn supervise(
    mut child: Child,
    how: Spawn,
    up: Arc<AtomicBool>,
    shutdown: Shutdown,
    changed: Arc<tokio::sync::Notify>,
) {
    let mut delay = RESTART_DELAY;
    loop {
        let started = tokio::time::Instant::now();
        let status = tokio::select! {
            status = child.wait() => status,
            () = shutdown.clone().wait() => {
                let _ = child.kill().await;
                return;
            }
        };
        up.store(false, Ordering::Relaxed);
        changed.notify_one();
        if started.elapsed() > Duration::from_secs(60) {
            delay = RESTART_DELAY;
        }
        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
        tracing::warn!(
            %status,
            restart_in_ms = delay.as_millis() as u64,
            log = %how.dir.join("tansu.log").display(),
            "the development broker stopped; collect and control report NOT_SERVING until it is back"
        );
        loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.clone().wait() => return,
            }
            delay = (delay * 2).min(MAX_RESTART_DELAY);
            match spawn(&how.bin, &how.addr, &how.dir).await {
                Ok(next) => {
                    child = next;
                    break;
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    restart_in_ms = delay.as_millis() as u64,
                    "the development broker did not come back"
                ),
            }
        }
        up.store(true, Ordering::Relaxed);
        changed.notify_one();
        tracing::info!(addr = %how.addr, "the development broker is back");
    }
}
