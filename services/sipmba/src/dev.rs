//! `sipmba server --dev`: the server's steps ([`crate::server`]) on embedded defaults, with what
//! development adds between them: a supervised tansu broker when no other is given, an admin user
//! whose password is printed once, a demo thing with a simulated edge agent streaming into the
//! platform (with the `demo-agent` feature, on by default), and the banner saying where
//! everything is and what to try next.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use sipmba_auth::client::bearer;
use sipmba_proto::v1 as pb;
use sipmba_runtime::Defaults;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::{
    local_io::{out, write_private},
    server::{Failure, Plan, Platform, ServerArgs, Target},
};

#[cfg(feature = "demo-agent")]
mod demo;

/// Runs every service on embedded defaults until SIGTERM/SIGINT: SQLite in the data directory,
/// plaintext on 127.0.0.1:7400, one partition per topic, and tansu on the port after the
/// server's unless `--brokers` names a log.
pub async fn run(args: ServerArgs) -> Result<(), Failure> {
    if args.target != Target::All {
        return Err(Failure::Usage(format!(
            "--dev runs every service; drop --target {}",
            args.target.name()
        )));
    }
    let defaults = Defaults {
        listen: Some("127.0.0.1:7400".into()),
        plaintext: true,
        database_url: Some(format!(
            "sqlite://{}?mode=rwc",
            args.data_dir.join("sipmba.db").display()
        )),
        own_keys: true,
        // One process needs no parallel partitions, and each partition is a follower polling
        // the broker.
        partitions: Some(1),
    };
    let plan = Plan::validate(Target::All, &args.config, &defaults)?;
    let mut platform = Platform::open(plan, true).await?;
    // --dev brings its own broker (tansu, which `.ci/dev` installs), or refuses to start.
    let embedded_broker = platform.config().queue.brokers.is_empty();
    if embedded_broker {
        let broker = crate::dev_broker::start(
            &args.data_dir,
            platform.config().listen,
            platform.shutdown(),
            platform.readiness_recheck(),
        )
        .await
        .map_err(Failure::Usage)?;
        platform.use_brokers(vec![broker.addr.clone()], broker.up());
    }
    platform.start().await?;
    let sso = platform
        .sso()
        .cloned()
        .ok_or_else(|| Failure::Runtime(anyhow::anyhow!("--dev runs sso")))?;
    let token = write_dev_token(&args.data_dir, &sso).await?;
    let broker = platform.config().queue.brokers.first().cloned();
    let shutdown = platform.shutdown();
    let bound = platform.bind().await?;
    let dev = Dev {
        data_dir: args.data_dir.clone(),
        url: bound.own_url(),
        broker,
        embedded_broker,
    };
    tokio::spawn(dev.bootstrap(sso, token, shutdown));
    bound.serve().await
}

/// The admin user's name.
pub const ADMIN: &str = "admin";
/// The demo thing's name.
pub const DEMO_THING: &str = "demo-thing";

/// The service principal of the `--dev` admin token.
const DEV_ADMIN_ID: Uuid = Uuid::from_u128(0x5350_5353_4445_4000_8000_0000_0000_0001);

/// What the data directory remembers between starts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct DevState {
    admin: Option<Uuid>,
    demo_thing: Option<Uuid>,
}

/// Where the platform runs, for the banner and the bootstrap.
#[derive(Debug, Clone)]
struct Dev {
    /// The data directory.
    data_dir: PathBuf,
    /// `http://127.0.0.1:<port>`.
    url: String,
    /// The log's address, when there is one.
    broker: Option<String>,
    /// Whether that is the embedded tansu of `--dev`.
    embedded_broker: bool,
}

/// An admin token for trying the platform with other gRPC clients, written to
/// `<data-dir>/dev-admin.token` (never logged). Returned for the bootstrap.
async fn write_dev_token(data_dir: &Path, sso: &sipmba_sso::Sso) -> Result<String, Failure> {
    use sipmba_auth::scopes::*;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("creating {}: {e}", data_dir.display())))?;
    let mut scopes = USER_SCOPES.to_vec();
    scopes.extend([
        OBJECTS_ADMIN,
        OBJECTS_AUTHORIZE,
        OBJECTS_EVENTS,
        TOKENS_INTROSPECT,
    ]);
    let issued = sso
        .issue_service_token(DEV_ADMIN_ID, &scopes)
        .await
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("issuing the dev token: {e}")))?;
    let path = data_dir.join("dev-admin.token");
    write_private(&path, issued.access_token.as_bytes())
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("writing {}: {e}", path.display())))?;
    tracing::info!(path = %path.display(), "wrote an admin token for development");
    Ok(issued.access_token)
}

impl Dev {
    fn state_path(&self) -> PathBuf {
        self.data_dir.join("dev-state.json")
    }

    fn load(&self) -> DevState {
        std::fs::read(self.state_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, state: &DevState) -> Result<(), String> {
        let json = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
        write_private(&self.state_path(), &json).map_err(|e| e.to_string())
    }

    /// Once the server answers: the admin user, the demo thing and its agent, then the banner.
    /// The agent runs until `shutdown`.
    async fn bootstrap(
        self,
        sso: sipmba_sso::Sso,
        token: String,
        shutdown: sipmba_runtime::Shutdown,
    ) {
        let setup = async {
            let channel = Channel::from_shared(self.url.clone())
                .map_err(|e| e.to_string())?
                .connect_lazy();
            wait_until_serving(&channel, &token).await?;
            let mut state = self.load();
            let password = self.admin(&sso, &mut state).await?;
            #[cfg(feature = "demo-agent")]
            let agent = match (&self.broker, state.admin) {
                (Some(_), Some(admin)) => {
                    Some(demo::agent(&self, &channel, &token, admin, &mut state).await?)
                }
                _ => None,
            };
            #[cfg(not(feature = "demo-agent"))]
            let agent = None::<std::convert::Infallible>;
            self.save(&state)?;
            Ok::<_, String>((password, agent, state))
        };
        let (password, agent, state) = tokio::select! {
            done = setup => match done {
                Ok(done) => done,
                Err(e) => {
                    tracing::error!(error = %e, "could not set up the admin user and the demo thing");
                    return;
                }
            },
            () = shutdown.clone().wait() => return,
        };
        self.banner(password.as_deref(), &state);
        #[cfg(feature = "demo-agent")]
        if let Some(agent) = agent {
            demo::run(agent, shutdown).await;
        }
        #[cfg(not(feature = "demo-agent"))]
        let _ = agent;
    }

    /// Registers the admin user at the first start; returns its password then, `None` later.
    async fn admin(
        &self,
        sso: &sipmba_sso::Sso,
        state: &mut DevState,
    ) -> Result<Option<String>, String> {
        if state.admin.is_some() {
            return Ok(None);
        }
        let password = format!(
            "{}-{}",
            &Uuid::new_v4().simple().to_string()[..10],
            &Uuid::new_v4().simple().to_string()[..10]
        );
        match sso.register(ADMIN, &password).await {
            Ok(id) => {
                state.admin = Some(id);
                self.save(state)?;
                Ok(Some(password))
            }
            Err(e) => Err(format!(
                "registering the user {ADMIN:?}: {e} (the data directory {} lost its dev-state.json; \
                 remove the directory to start afresh)",
                self.data_dir.display()
            )),
        }
    }

    fn banner(&self, password: Option<&str>, state: &DevState) {
        let me = std::env::current_exe()
            .ok()
            .and_then(|exe| {
                let cwd = std::env::current_dir().ok()?;
                Some(exe.strip_prefix(&cwd).map(Path::to_path_buf).unwrap_or(exe))
            })
            .map_or_else(|| "sipmba".to_owned(), |p| p.display().to_string());
        let admin = match password {
            Some(p) => format!("{ADMIN}   password: {p}   (shown this once: keep it)"),
            None => format!(
                "{ADMIN}   (its password was printed at the first start; `rm -rf {}` starts afresh)",
                self.data_dir.display()
            ),
        };
        let demo = match (&self.broker, state.demo_thing) {
            _ if !cfg!(feature = "demo-agent") => {
                "none: this build has no demo agent (built without the `demo-agent` feature)".into()
            }
            (Some(_), Some(id)) => format!(
                "{DEMO_THING} ({id}): a simulated agent reads temperature and humidity every 2 s and uploads every 5 s"
            ),
            _ => "none: it could not be set up (see the log above)".into(),
        };
        let broker = match (self.broker.as_deref(), self.embedded_broker) {
            (Some(b), true) => format!(
                "{b} (tansu; data and output in {}/broker)",
                self.data_dir.display()
            ),
            (Some(b), false) => b.to_owned(),
            (None, _) => "none: collect, control and processing do not run".into(),
        };
        out(format_args!(
            "\nSIP-MBA is running (development mode; data in {dir})\n\n  \
             console      {url}/  (sign in as {ADMIN})\n  \
             API          {url}  (gRPC with reflection; OAuth 2.0 at /oauth2/token; /metrics)\n  \
             broker       {broker}\n  \
             admin user   {admin}\n  \
             demo thing   {demo}\n  \
             admin token  {dir}/dev-admin.token (a service token for grpcurl)\n\n\
             Try next:\n  \
             {me} login --username {ADMIN}\n  \
             {me} things list\n  \
             {me} commands send {DEMO_THING} fan.on --wait\n\n\
             Ctrl-C stops it; starting it again keeps the data.",
            dir = self.data_dir.display(),
            url = self.url,
        ));
    }
}

/// Waits until Objects answers (its schema is migrated once it does).
async fn wait_until_serving(channel: &Channel, token: &str) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let probe = pb::user_service_client::UserServiceClient::new(channel.clone())
            .get_user(bearer(
                token,
                pb::GetUserRequest {
                    id: Some(pb::UserId {
                        value: Uuid::nil().to_string(),
                    }),
                },
            ))
            .await;
        match probe {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == tonic::Code::NotFound => return Ok(()),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(format!("the server did not answer: {}", e.message()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
