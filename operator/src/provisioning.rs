//! What the operator does for a Thing outside Kubernetes: registers it with Objects (through
//! the one Objects client every service uses), gets its credential and access token from sso
//! (as the `sipmba-operator` service client), pushes them to the agent's provisioning endpoint
//! with the enrollment proof, and at the end revokes its tokens and deregisters it. The Thing reconciler drives these steps; each is idempotent.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use sipmba_auth::{
    client::{CredentialsError, ServiceCredentials, bearer},
    peer_tls::PeerCa,
};
use sipmba_proto::{enrollment, v1 as pb};
use sipmba_runtime::{
    ServiceError,
    objects::{ObjectsClient, ServiceToken},
};
use tonic::{Code, Request, transport::Channel};
use uuid::Uuid;

/// The operator's service client in sso.
pub const CLIENT_ID: &str = "sipmba-operator";

/// Why a provisioning step failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A platform or agent call failed (`transient` tells whether trying again may help).
    #[error("{what}: {message}")]
    Call {
        /// The step.
        what: &'static str,
        /// What the other side said.
        message: String,
        /// A retry may succeed (unreachable, unavailable, rate limited).
        transient: bool,
    },
    /// The operator's own token could not be had.
    #[error("the operator's token: {0}")]
    Token(#[from] CredentialsError),
    /// A setting is wrong (a URL, a CA).
    #[error("{0}")]
    Config(String),
}

impl ProvisionError {
    fn call(what: &'static str, status: &tonic::Status) -> Self {
        ProvisionError::Call {
            what,
            message: format!("{} ({:?})", status.message(), status.code()),
            transient: matches!(
                status.code(),
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::Unknown
                    | Code::Internal
            ),
        }
    }

    /// A call through the Objects client failed: transient unless Objects refused the request
    /// itself.
    fn objects(what: &'static str, error: ServiceError) -> Self {
        let transient = matches!(
            error,
            ServiceError::Unavailable(_)
                | ServiceError::Internal(_)
                | ServiceError::ResourceExhausted { .. }
        );
        ProvisionError::Call {
            what,
            message: format!("{error} ({:?})", error.code()),
            transient,
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ProvisionError::Call { transient, .. } => *transient,
            ProvisionError::Token(_) => true,
            ProvisionError::Config(_) => false,
        }
    }
}

/// Where a platform answers, as the operator reaches it.
#[derive(Debug, Clone)]
pub struct PlatformAccess {
    /// sso (gRPC and `/oauth2/token`).
    pub sso_url: String,
    /// Objects.
    pub objects_url: String,
    /// The platform CA (PEM), for `https://`.
    pub ca: Option<Vec<u8>>,
}

/// The operator acting on one platform.
#[derive(Clone)]
pub struct Operator {
    sso: Channel,
    objects: ObjectsClient,
    credentials: Arc<ServiceCredentials>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator").finish_non_exhaustive()
    }
}

/// A thing's access token.
#[derive(Clone)]
pub struct ThingToken {
    /// The token.
    pub access_token: String,
    /// When it expires.
    pub expires: prost_types::Timestamp,
}

impl std::fmt::Debug for ThingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("ThingToken")
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

fn thing_id(id: Uuid) -> Option<pb::ThingId> {
    Some(pb::ThingId {
        value: id.to_string(),
    })
}

impl Operator {
    /// The operator on `platform`, authenticating with its client secret.
    pub fn new(platform: &PlatformAccess, client_secret: &str) -> Result<Self, ProvisionError> {
        let ca = platform.ca.as_deref();
        let timeout = Duration::from_secs(10);
        let channel = |url: &str| {
            sipmba_auth::peer_tls::channel_trusting(url, timeout, ca)
                .map_err(ProvisionError::Config)
        };
        let credentials = ServiceCredentials::trusting(
            &format!("{}/oauth2/token", platform.sso_url.trim_end_matches('/')),
            CLIENT_ID,
            client_secret,
            "",
            ca,
        )
        .map_err(|e| ProvisionError::Config(e.to_string()))?;
        let credentials = Arc::new(credentials);
        let peer_ca = ca.map_or_else(PeerCa::none, |pem| PeerCa::new(pem.to_vec()));
        let objects = ObjectsClient::new(
            &platform.objects_url,
            ServiceToken::Credentials(credentials.clone()),
            &peer_ca,
        )
        .map_err(|e| ProvisionError::Config(e.to_string()))?;
        Ok(Self {
            sso: channel(&platform.sso_url)?,
            objects,
            credentials,
        })
    }

    async fn req<T>(&self, msg: T) -> Result<Request<T>, ProvisionError> {
        Ok(bearer(&self.credentials.token().await?, msg))
    }

    /// Registers a thing named `name` for `owner`, or finds the one registered before (its
    /// labels brought up to date); returns its id.
    pub async fn register(
        &self,
        owner: Uuid,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Uuid, ProvisionError> {
        self.objects
            .register_thing(owner, name, labels)
            .await
            .map_err(|e| ProvisionError::objects("registering the thing", e))
    }

    /// A new client secret for the thing (the first, or one replacing the last): `(client_id,
    /// secret)`.
    pub async fn credential(&self, thing: Uuid) -> Result<(String, String), ProvisionError> {
        let mut accounts = pb::account_service_client::AccountServiceClient::new(self.sso.clone());
        let issued = accounts
            .issue_thing_secret(
                self.req(pb::IssueThingSecretRequest {
                    thing: thing_id(thing),
                })
                .await?,
            )
            .await;
        match issued {
            Ok(r) => {
                let r = r.into_inner();
                Ok((r.client_id, r.client_secret))
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                let r = accounts
                    .rotate_thing_secret(
                        self.req(pb::RotateThingSecretRequest {
                            thing: thing_id(thing),
                        })
                        .await?,
                    )
                    .await
                    .map_err(|s| ProvisionError::call("rotating the thing's secret", &s))?
                    .into_inner();
                Ok((r.client_id, r.client_secret))
            }
            Err(status) => Err(ProvisionError::call("issuing the thing's secret", &status)),
        }
    }

    /// An access token for the thing, with its credential (client_credentials at sso).
    pub async fn thing_token(
        &self,
        client_id: &str,
        secret: &str,
    ) -> Result<ThingToken, ProvisionError> {
        let answer = pb::token_service_client::TokenServiceClient::new(self.sso.clone())
            .token(pb::TokenRequest {
                grant: Some(pb::token_request::Grant::ClientCredentials(
                    pb::ClientCredentialsGrant {
                        client_id: client_id.to_owned(),
                        client_secret: secret.to_owned(),
                        scope: String::new(),
                    },
                )),
            })
            .await
            .map_err(|s| ProvisionError::call("getting the thing's token", &s))?
            .into_inner();
        let lifetime = answer
            .expires_in
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(Duration::from_secs(3600));
        Ok(ThingToken {
            access_token: answer.access_token,
            expires: prost_types::Timestamp::from(std::time::SystemTime::now() + lifetime),
        })
    }

    /// Ends every token of the thing issued up to now (within a second, everywhere).
    pub async fn revoke(&self, thing: Uuid) -> Result<(), ProvisionError> {
        pb::account_service_client::AccountServiceClient::new(self.sso.clone())
            .revoke_subject(
                self.req(pb::RevokeSubjectRequest {
                    kind: pb::PrincipalKind::Thing as i32,
                    subject: thing.to_string(),
                })
                .await?,
            )
            .await
            .map_err(|s| ProvisionError::call("revoking the thing's tokens", &s))?;
        Ok(())
    }

    /// Deletes the thing from Objects; one that is gone already counts as deleted.
    pub async fn deregister(&self, thing: Uuid) -> Result<(), ProvisionError> {
        self.objects
            .delete_thing(thing)
            .await
            .map_err(|e| ProvisionError::objects("deregistering the thing", e))
    }
}

/// Pushes `request` to the agent at `endpoint`, proven with the enrollment secret (the secret
/// itself never travels); `ca` verifies an `https://` endpoint.
pub async fn deliver(
    endpoint: &str,
    enrollment_secret: &[u8],
    ca: Option<&[u8]>,
    mut request: pb::ProvisionRequest,
) -> Result<pb::ProvisionResponse, ProvisionError> {
    request.enrollment_proof =
        enrollment::hmac_proof(enrollment_secret, &enrollment::provision_message(&request));
    let channel = sipmba_auth::peer_tls::channel_trusting(endpoint, CHANNEL_TIMEOUT, ca)
        .map_err(ProvisionError::Config)?;
    let mut agent = pb::edge_service_client::EdgeServiceClient::new(channel);
    let answer = within_agent_timeout("delivering to the agent", agent.provision(request)).await?;
    Ok(answer)
}

/// The agent's status, proven with the enrollment secret.
pub async fn agent_status(
    endpoint: &str,
    enrollment_secret: &[u8],
    ca: Option<&[u8]>,
) -> Result<pb::AgentStatus, ProvisionError> {
    let mut request = pb::GetStatusRequest {
        request_time: Some(std::time::SystemTime::now().into()),
        ..Default::default()
    };
    request.enrollment_proof =
        enrollment::hmac_proof(enrollment_secret, &enrollment::status_message(&request));
    let channel = sipmba_auth::peer_tls::channel_trusting(endpoint, CHANNEL_TIMEOUT, ca)
        .map_err(ProvisionError::Config)?;
    let mut agent = pb::edge_service_client::EdgeServiceClient::new(channel);
    within_agent_timeout("reading the agent's status", agent.get_status(request)).await
}

/// The channel's own request timeout, beyond [`AGENT_TIMEOUT`] so that the bound every call
/// gets, and its message, is that one.
const CHANNEL_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest a call to an agent may take, connection and TLS and HTTP/2 handshakes included: an
/// agent on a LAN that is off, or an address that swallows packets, costs its Thing this and
/// no more (Things are reconciled concurrently, each failure backs off on its own).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

async fn within_agent_timeout<T>(
    what: &'static str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, ProvisionError> {
    match tokio::time::timeout(AGENT_TIMEOUT, call).await {
        Ok(Ok(answer)) => Ok(answer.into_inner()),
        Ok(Err(status)) => Err(ProvisionError::call(what, &status)),
        Err(_) => Err(ProvisionError::Call {
            what,
            message: format!("no answer within {} s", AGENT_TIMEOUT.as_secs()),
            transient: true,
        }),
    }
}
