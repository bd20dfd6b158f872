//! Who may do what to which thing: asked of Objects (`AccessService`) with the calling
//! service's own token (Control before queuing a command, Processing before showing telemetry).

use std::{sync::Arc, time::Duration};

use crate::{ServiceError, ServiceResult};
use sipmba_auth::{client::ServiceCredentials, peer_tls::PeerCa};
use sipmba_proto::v1 as pb;
use tonic::{Code, Request, transport::Channel};
use uuid::Uuid;

/// Where a service's own access token comes from.
#[derive(Clone)]
pub enum ServiceToken {
    /// `client_credentials` at sso, renewed before expiry.
    Credentials(Arc<ServiceCredentials>),
    /// A fixed token (tests).
    Fixed(String),
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        match self {
            Self::Credentials(c) => f.debug_tuple("Credentials").field(c).finish(),
            Self::Fixed(_) => f.write_str("Fixed(..)"),
        }
    }
}

impl ServiceToken {
    async fn get(&self) -> ServiceResult<String> {
        match self {
            Self::Credentials(c) => c.token().await.map_err(|e| {
                ServiceError::Unavailable(format!("cannot obtain this service's own token: {e}"))
            }),
            Self::Fixed(t) => Ok(t.clone()),
        }
    }

    /// `msg` as a request carrying this service's bearer token.
    pub async fn request<T>(&self, msg: T) -> ServiceResult<Request<T>> {
        let token = self.get().await?;
        let mut request = Request::new(msg);
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ServiceError::Internal("service token is not ASCII".into()))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// A decision about a user and a thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allowed,
    /// The user cannot reach the thing (or it does not exist): answer NOT_FOUND.
    NotReachable,
    /// The user reaches the thing without the permission.
    PermissionMissing,
    /// The user reaches the thing, which is not effectively ACTIVE.
    ThingInactive,
}

/// A client of Objects' `AccessService`.
#[derive(Debug, Clone)]
pub struct ObjectsAccess {
    channel: Channel,
    token: ServiceToken,
}

fn unavailable(status: &tonic::Status) -> ServiceError {
    ServiceError::Unavailable(format!(
        "objects cannot answer an access check: {}",
        status.message()
    ))
}

impl ObjectsAccess {
    /// Objects at `url` (connects lazily; an `https://` one verified against `ca`).
    pub fn new(url: &str, token: ServiceToken, ca: &PeerCa) -> ServiceResult<Self> {
        let channel = ca
            .channel(url, Duration::from_secs(10))
            .map_err(|e| ServiceError::Internal(format!("objects: {e}")))?;
        Ok(Self { channel, token })
    }

    async fn request<T>(&self, msg: T) -> ServiceResult<Request<T>> {
        self.token.request(msg).await
    }

    /// May `user` exercise `permission` on `thing`?
    pub async fn check(
        &self,
        user: Uuid,
        thing: Uuid,
        permission: pb::ChannelPermission,
    ) -> ServiceResult<Decision> {
        let request = self
            .request(pb::CheckAccessRequest {
                user: Some(pb::UserId {
                    value: user.to_string(),
                }),
                thing: Some(pb::ThingId {
                    value: thing.to_string(),
                }),
                permission: permission as i32,
            })
            .await?;
        let answer = pb::access_service_client::AccessServiceClient::new(self.channel.clone())
            .check_access(request)
            .await
            .map_err(|s| unavailable(&s))?
            .into_inner();
        if answer.allowed {
            return Ok(Decision::Allowed);
        }
        Ok(match pb::AccessDenial::try_from(answer.denial) {
            Ok(pb::AccessDenial::PermissionMissing) => Decision::PermissionMissing,
            Ok(pb::AccessDenial::ThingInactive) => Decision::ThingInactive,
            _ => Decision::NotReachable,
        })
    }

    /// The active things of a channel, or matching labels, on which `user` may exercise every
    /// one of `permissions`; `None` when the user or the channel cannot be reached (answer
    /// NOT_FOUND). At most 10,000 things (more are left out, with a warning).
    pub async fn accessible_things(
        &self,
        user: Uuid,
        selection: pb::list_accessible_things_request::Selection,
        permissions: &[pb::ChannelPermission],
    ) -> ServiceResult<Option<Vec<Uuid>>> {
        let request = self
            .request(pb::ListAccessibleThingsRequest {
                user: Some(pb::UserId {
                    value: user.to_string(),
                }),
                selection: Some(selection),
                permissions: permissions.iter().map(|p| *p as i32).collect(),
            })
            .await?;
        let answer = match pb::access_service_client::AccessServiceClient::new(self.channel.clone())
            .list_accessible_things(request)
            .await
        {
            Ok(answer) => answer.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) if s.code() == Code::InvalidArgument => {
                return Err(ServiceError::invalid(s.message().to_owned()));
            }
            Err(s) => return Err(unavailable(&s)),
        };
        if answer.truncated {
            tracing::warn!(%user, "a selection holds more than 10,000 things; only the first are used");
        }
        Ok(Some(
            answer
                .things
                .iter()
                .filter_map(|t| Uuid::parse_str(&t.value).ok())
                .collect(),
        ))
    }

    /// The effective state of `thing`, or `None` when it does not exist (service callers).
    pub async fn thing_state(&self, thing: Uuid) -> ServiceResult<Option<pb::ObjectState>> {
        let request = self
            .request(pb::GetEffectiveStateRequest {
                subject: Some(pb::get_effective_state_request::Subject::Thing(
                    pb::ThingId {
                        value: thing.to_string(),
                    },
                )),
            })
            .await?;
        match pb::access_service_client::AccessServiceClient::new(self.channel.clone())
            .get_effective_state(request)
            .await
        {
            Ok(answer) => Ok(Some(
                pb::ObjectState::try_from(answer.into_inner().effective_state)
                    .unwrap_or(pb::ObjectState::Disabled),
            )),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(unavailable(&s)),
        }
    }
}
