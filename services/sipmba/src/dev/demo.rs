//! The demo thing of `--dev` (the `demo-agent` feature): created at the first start, and its
//! simulated agent — the real `sipmba-edge` code with a simulated temperature and humidity sensor
//! and a `fan` output — streaming into the platform until the server stops.

use sipmba_auth::client::bearer;
use sipmba_proto::v1 as pb;
use tonic::transport::Channel;
use uuid::Uuid;

use super::{DEMO_THING, Dev, DevState};

/// The demo thing's simulated agent: created, given its client secret (it renews its own
/// tokens), and opened on its outbox in `<data-dir>/demo-thing`.
pub(super) async fn agent(
    dev: &Dev,
    channel: &Channel,
    token: &str,
    admin: Uuid,
    state: &mut DevState,
) -> Result<sipmba_edge::agent::Agent, String> {
    let dir = dev.data_dir.join("demo-thing");
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
            dev.save(state)?;
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
        collect_endpoint: dev.url.clone(),
        client_id,
        client_secret: Some(secret),
        token_endpoint: Some(dev.url.clone()),
        ..Default::default()
    })?;
    Ok(agent)
}

/// Runs the agent's sampler and uploader until `shutdown`.
pub(super) async fn run(agent: sipmba_edge::agent::Agent, shutdown: sipmba_runtime::Shutdown) {
    let sampler = tokio::spawn(agent.clone().sampler());
    let uploader = tokio::spawn(agent.uploader());
    shutdown.wait().await;
    sampler.abort();
    uploader.abort();
}
