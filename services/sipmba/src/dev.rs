//! What `sipmba server --dev` adds to the services: an admin user whose password is printed once,
//! a demo thing with a simulated edge agent streaming into the platform, and the banner saying
//! where everything is and what to try next.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use sipmba_proto::v1 as pb;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::{
    cli::session::{bearer, write_private},
    server::Failure,
};

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
pub struct Dev {
    /// The data directory.
    pub data_dir: PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The log's address, when there is one.
    pub broker: Option<String>,
    /// Whether that is the embedded tansu of `--dev`.
    pub embedded_broker: bool,
}

/// An admin token for trying the platform with other gRPC clients, written to
/// `<data-dir>/dev-admin.token` (never logged). Returned for the bootstrap.
pub async fn write_dev_token(data_dir: &Path, sso: &sipmba_sso::Sso) -> Result<String, Failure> {
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
    pub async fn bootstrap(
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
            let agent = match (&self.broker, state.admin) {
                (Some(_), Some(admin)) => {
                    Some(self.demo_agent(&channel, &token, admin, &mut state).await?)
                }
                _ => None,
            };
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
        if let Some(agent) = agent {
            let sampler = tokio::spawn(agent.clone().sampler());
            let uploader = tokio::spawn(agent.uploader());
            shutdown.wait().await;
            sampler.abort();
            uploader.abort();
        }
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

    /// The demo thing's simulated agent: created, given its client secret (it renews its own
    /// tokens), and opened on its outbox in `<data-dir>/demo-thing`.
    async fn demo_agent(
        &self,
        channel: &Channel,
        token: &str,
        admin: Uuid,
        state: &mut DevState,
    ) -> Result<sipmba_edge::agent::Agent, String> {
        let dir = self.data_dir.join("demo-thing");
        let config = format!(
            r#"
state_dir = {dir:?}
sample_interval_secs = 2
upload_interval_secs = 5
max_backoff_secs = 10

[[sensors]]
kind = "simulated"
metric = "temperature"
unit = "Cel"
min = 18.0
max = 28.0

[[sensors]]
kind = "simulated"
metric = "humidity"
unit = "%RH"
min = 30.0
max = 60.0

[[outputs]]
name = "fan"
"#,
            dir = dir.display().to_string()
        );
        let config = sipmba_edge::config::Config::parse(&config).map_err(|e| e.to_string())?;
        let outputs = sipmba_edge::agent::Outputs::open(&config);
        let agent = sipmba_edge::agent::Agent::open(config, outputs)?;
        if state.demo_thing.is_some() && agent.credentials.get().is_some() {
            return Ok(agent);
        }
        let thing = match state.demo_thing {
            Some(thing) => thing,
            None => {
                let created = pb::thing_service_client::ThingServiceClient::new(channel.clone())
                    .create_thing(bearer(
                        token,
                        pb::CreateThingRequest {
                            name: DEMO_THING.into(),
                            owner: Some(pb::UserId {
                                value: admin.to_string(),
                            }),
                            labels: [("kind".to_owned(), "simulated".to_owned())].into(),
                        },
                    ))
                    .await
                    .map_err(|e| format!("creating {DEMO_THING}: {}", e.message()))?
                    .into_inner();
                let id = created.id.map(|i| i.value).unwrap_or_default();
                let id = Uuid::parse_str(&id).map_err(|e| e.to_string())?;
                state.demo_thing = Some(id);
                self.save(state)?;
                id
            }
        };
        let mut accounts = pb::account_service_client::AccountServiceClient::new(channel.clone());
        let id = Some(pb::ThingId {
            value: thing.to_string(),
        });
        let issued = accounts
            .issue_thing_secret(bearer(
                token,
                pb::IssueThingSecretRequest { thing: id.clone() },
            ))
            .await;
        let (client_id, secret) = match issued {
            Ok(r) => {
                let r = r.into_inner();
                (r.client_id, r.client_secret)
            }
            // The agent's state was removed: give it a new secret.
            Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                let r = accounts
                    .rotate_thing_secret(bearer(token, pb::RotateThingSecretRequest { thing: id }))
                    .await
                    .map_err(|e| format!("rotating the demo thing's secret: {}", e.message()))?
                    .into_inner();
                (r.client_id, r.client_secret)
            }
            Err(e) => return Err(format!("the demo thing's secret: {}", e.message())),
        };
        agent.credentials.replace(pb::ProvisionRequest {
            thing: Some(pb::ThingId {
                value: thing.to_string(),
            }),
            // Empty and expired: the agent gets its first token with its secret.
            access_token: String::new(),
            token_expires: None,
            collect_endpoint: self.url.clone(),
            client_id,
            client_secret: Some(secret),
            token_endpoint: Some(self.url.clone()),
            ..Default::default()
        })?;
        Ok(agent)
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
        crate::cli::output::out(format_args!(
            "\nSIP-MBA is running (development mode; data in {dir})\n\n  \
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
