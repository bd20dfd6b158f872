//! `sipmba server --dev` as the tests start it: a process in a directory of its own (its data in
//! `<dir>/.sipmba`), listening on a free pair of ports (its broker takes the second), killed when
//! dropped. What it prints on standard output is kept (the banner) and passed on, like its log,
//! to the standard error of the test (or benchmark) that started it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use uuid::Uuid;

use crate::{Signal, eventually, eventually_blocking, signal};

/// How a [`DevServer`] is started.
#[derive(Debug, Clone, Default)]
pub struct DevOptions {
    /// Its working directory (default: a new temporary one, removed with the server).
    pub dir: Option<PathBuf>,
    /// Its port (default: [`crate::free_port_pair`]).
    pub port: Option<u16>,
    /// More arguments after `server --dev --listen <addr>` (`--config`, `--brokers`).
    pub args: Vec<String>,
    /// `RUST_LOG` (default: none, the server's own levels).
    pub log: Option<String>,
    /// A file its log (standard error) is appended to instead of the starter's standard error.
    pub log_file: Option<PathBuf>,
}

/// A running `sipmba server --dev`.
pub struct DevServer {
    /// `127.0.0.1:<port>`.
    pub listen: String,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its port.
    pub port: u16,
    /// Its working directory.
    pub dir: PathBuf,
    child: Child,
    stdout: Arc<Mutex<String>>,
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for DevServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevServer")
            .field("url", &self.url)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// How the banner's last line begins.
const BANNER_END: &str = "Ctrl-C stops it";

impl DevServer {
    /// Starts `bin server --dev` as `options` say (without waiting for anything).
    pub fn start(bin: &Path, options: DevOptions) -> Self {
        let (temp, dir) = match options.dir {
            Some(dir) => (None, dir),
            None => {
                let temp = tempfile::tempdir().expect("a temporary directory");
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        let port = options.port.unwrap_or_else(crate::free_port_pair);
        let listen = format!("127.0.0.1:{port}");
        let mut command = Command::new(bin);
        command
            .args(["server", "--dev", "--listen", &listen])
            .args(&options.args)
            .current_dir(&dir)
            .env_remove("SIPMBA_CONFIG")
            .stdout(Stdio::piped());
        match &options.log_file {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
                command.stderr(file)
            }
            None => command.stderr(Stdio::inherit()),
        };
        match &options.log {
            Some(log) => command.env("RUST_LOG", log),
            None => command.env_remove("RUST_LOG"),
        };
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} server --dev: {e}", bin.display()));
        let stdout = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            let kept = stdout.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    if let Ok(mut kept) = kept.lock() {
                        kept.push_str(&line);
                        kept.push('\n');
                    }
                }
            });
        }
        Self {
            url: format!("http://{listen}"),
            listen,
            port,
            dir,
            child,
            stdout,
            _temp: temp,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A channel to the server, once it accepts connections (within a minute).
    pub async fn channel(&self) -> Channel {
        let endpoint = Endpoint::from_shared(self.url.clone()).expect("a URL");
        eventually("the dev server accepting connections", MINUTE, || async {
            endpoint.connect().await.ok()
        })
        .await
    }

    /// Waits until the server reports each of `services` SERVING (within two minutes); the
    /// channel it asked on.
    pub async fn serving(&self, services: &[&str]) -> Channel {
        let channel = self.channel().await;
        for service in services {
            let health = HealthClient::new(channel.clone());
            eventually(&format!("{service} SERVING"), 2 * MINUTE, || {
                let mut health = health.clone();
                async move {
                    health
                        .check(HealthCheckRequest {
                            service: (*service).to_owned(),
                        })
                        .await
                        .ok()
                        .is_some_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
                }
            })
            .await;
        }
        channel
    }

    /// What it printed up to the end of its banner (within two minutes of its start).
    pub fn banner(&self) -> String {
        eventually_blocking("the dev server's banner", 2 * MINUTE, || {
            let out = self.stdout.lock().ok()?;
            out.find(BANNER_END).map(|at| {
                let end = out[at..].find('\n').map_or(out.len(), |n| at + n + 1);
                out[..end].to_owned()
            })
        })
    }

    /// The admin password the banner shows at a first start.
    pub fn password(&self) -> Option<String> {
        let banner = self.banner();
        let at = banner.find("password: ")?;
        banner[at + "password: ".len()..]
            .split_whitespace()
            .next()
            .map(str::to_owned)
    }

    /// The admin token `--dev` writes, once written (within a minute).
    pub async fn admin_token(&self) -> String {
        let path = self.dir.join(".sipmba/dev-admin.token");
        eventually("the dev admin token", MINUTE, || async {
            std::fs::read_to_string(&path)
                .ok()
                .filter(|t| !t.is_empty())
        })
        .await
    }

    /// The admin user's id, once `--dev` registered it (within a minute).
    pub async fn admin(&self) -> Uuid {
        let path = self.dir.join(".sipmba/dev-state.json");
        eventually("the dev platform's admin user", MINUTE, || async {
            let text = std::fs::read_to_string(&path).ok()?;
            let value: serde_json::Value = serde_json::from_str(&text).ok()?;
            Uuid::parse_str(value["admin"].as_str()?).ok()
        })
        .await
    }

    /// Sends `sig` to the server.
    pub fn signal(&self, sig: Signal) {
        signal(self.pid(), sig);
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("the server's status")
    }

    /// Waits for it to exit, for at most `within`: its exit status, or an error saying it is
    /// still running.
    pub async fn wait(&mut self, within: Duration) -> Result<ExitStatus, String> {
        let deadline = std::time::Instant::now() + within;
        loop {
            match self.exited(deadline, within) {
                Some(outcome) => return outcome,
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// [`DevServer::wait`] for a test without a runtime.
    pub fn wait_blocking(&mut self, within: Duration) -> Result<ExitStatus, String> {
        let deadline = std::time::Instant::now() + within;
        loop {
            match self.exited(deadline, within) {
                Some(outcome) => return outcome,
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The outcome of a wait of `within` ending at `deadline`, once there is one.
    fn exited(
        &mut self,
        deadline: std::time::Instant,
        within: Duration,
    ) -> Option<Result<ExitStatus, String>> {
        match self.try_wait() {
            Some(status) => Some(Ok(status)),
            None if std::time::Instant::now() > deadline => {
                Some(Err(format!("still running after {within:?}")))
            }
            None => None,
        }
    }

    /// SIGTERM, and its exit status within 30 s.
    pub async fn stop(&mut self) -> Result<ExitStatus, String> {
        self.signal(Signal::TERM);
        self.wait(Duration::from_secs(30)).await
    }
}

const MINUTE: Duration = Duration::from_secs(60);

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
