//! What sso asks of Objects, over gRPC, with a service token sso mints for itself.

use std::{sync::Mutex, time::Duration};

use sipmba_auth::peer_tls::PeerCa;
use sipmba_auth::{
    Kind,
    signing::{AccessClaims, unix_now},
};
use sipmba_proto::v1 as pb;
use sipmba_runtime::{ServiceError, ServiceResult};
use tonic::{Code, Request, transport::Channel};
use uuid::Uuid;

use crate::keys::KeyRing;

/// sso's own principal id when it calls Objects.
pub const SSO_SERVICE_ID: Uuid = Uuid::from_u128(0x5350_5353_4f00_4000_8000_0000_0000_0001);

/// A client of Objects.
pub struct ObjectsClient {
    channel: Channel,
    issuer: String,
    audience: String,
    token: Mutex<Option<(String, i64)>>,
}

impl std::fmt::Debug for ObjectsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectsClient").finish_non_exhaustive()
    }
}

fn unavailable(e: tonic::Status) -> ServiceError {
    ServiceError::Unavailable(format!("objects: {}", e.message()))
}

impl ObjectsClient {
    /// Talks to Objects at `url` (http://, or https:// verified against `ca`); connects lazily.
    pub fn new(url: &str, issuer: &str, audience: &str, ca: &PeerCa) -> ServiceResult<Self> {
        let channel = ca
            .channel(url, Duration::from_secs(10))
            .map_err(|e| ServiceError::Internal(format!("objects: {e}")))?;
        Ok(Self {
            channel,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            token: Mutex::new(None),
        })
    }

    fn request<T>(&self, keys: &KeyRing, msg: T) -> ServiceResult<Request<T>> {
        let now = unix_now();
        let token = {
            let mut cached = self.token.lock().unwrap_or_else(|e| e.into_inner());
            match cached.as_ref() {
                Some((token, exp)) if *exp > now + 60 => token.clone(),
                _ => {
                    use sipmba_auth::scopes::*;
                    let claims = AccessClaims::new(
                        &self.issuer,
                        &self.audience,
                        Kind::Service,
                        SSO_SERVICE_ID,
                        &[
                            USERS_READ,
                            USERS_WRITE,
                            THINGS_READ,
                            OBJECTS_ADMIN,
                            OBJECTS_AUTHORIZE,
                            OBJECTS_EVENTS,
                        ],
                        Duration::from_secs(600),
                    );
                    let token = keys
                        .current()
                        .sign(&claims)
                        .map_err(|e| ServiceError::Internal(e.to_string()))?;
                    *cached = Some((token.clone(), claims.exp));
                    token
                }
            }
        };
        let mut request = Request::new(msg);
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ServiceError::Internal("token is not a header value".into()))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }

    /// Creates a root user; ALREADY_EXISTS and INVALID_ARGUMENT come back as such.
    pub async fn create_root_user(&self, keys: &KeyRing, username: &str) -> ServiceResult<Uuid> {
        let mut client = pb::user_service_client::UserServiceClient::new(self.channel.clone());
        let request = self.request(
            keys,
            pb::CreateUserRequest {
                username: username.to_owned(),
                parent: None,
            },
        )?;
        let user = client
            .create_user(request)
            .await
            .map_err(|e| match e.code() {
                Code::AlreadyExists => ServiceError::AlreadyExists(e.message().to_owned()),
                Code::InvalidArgument => ServiceError::InvalidArgument(e.message().to_owned()),
                _ => unavailable(e),
            })?;
        let id = user.into_inner().id.map(|i| i.value).unwrap_or_default();
        Uuid::parse_str(&id)
            .map_err(|_| ServiceError::Internal("objects returned a bad user id".into()))
    }

    /// The username of `user`; `None` when it does not exist or, with `bearer` (a user's own
    /// access token), when it is not in that user's subtree.
    pub async fn username(
        &self,
        keys: &KeyRing,
        bearer: Option<&str>,
        user: Uuid,
    ) -> ServiceResult<Option<String>> {
        let mut client = pb::user_service_client::UserServiceClient::new(self.channel.clone());
        let msg = pb::GetUserRequest {
            id: Some(pb::UserId {
                value: user.to_string(),
            }),
        };
        let request = match bearer {
            Some(bearer) => {
                let mut request = Request::new(msg);
                let value = format!("Bearer {bearer}")
                    .parse()
                    .map_err(|_| ServiceError::invalid("the bearer token is not a header value"))?;
                request.metadata_mut().insert("authorization", value);
                request
            }
            None => self.request(keys, msg)?,
        };
        match client.get_user(request).await {
            Ok(found) => Ok(Some(found.into_inner().username)),
            Err(e) if e.code() == Code::NotFound => Ok(None),
            Err(e) if e.code() == Code::PermissionDenied => {
                Err(ServiceError::PermissionDenied(e.message().to_owned()))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Effective state of a user; `None` when it does not exist.
    pub async fn user_active(&self, keys: &KeyRing, user: Uuid) -> ServiceResult<Option<bool>> {
        self.effective(
            keys,
            pb::get_effective_state_request::Subject::User(pb::UserId {
                value: user.to_string(),
            }),
        )
        .await
        .map(|r| r.map(|(active, _)| active))
    }

    /// Effective state and owner of a thing; `None` when it does not exist.
    pub async fn thing_active(
        &self,
        keys: &KeyRing,
        thing: Uuid,
    ) -> ServiceResult<Option<(bool, Uuid)>> {
        let found = self
            .effective(
                keys,
                pb::get_effective_state_request::Subject::Thing(pb::ThingId {
                    value: thing.to_string(),
                }),
            )
            .await?;
        Ok(found.and_then(|(active, owner)| owner.map(|o| (active, o))))
    }

    async fn effective(
        &self,
        keys: &KeyRing,
        subject: pb::get_effective_state_request::Subject,
    ) -> ServiceResult<Option<(bool, Option<Uuid>)>> {
        let mut client = pb::access_service_client::AccessServiceClient::new(self.channel.clone());
        let request = self.request(
            keys,
            pb::GetEffectiveStateRequest {
                subject: Some(subject),
            },
        )?;
        match client.get_effective_state(request).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                let owner = resp.owner.and_then(|o| Uuid::parse_str(&o.value).ok());
                Ok(Some((
                    resp.effective_state == pb::ObjectState::Active as i32,
                    owner,
                )))
            }
            Err(e) if e.code() == Code::NotFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// True when `user` controls `thing` (owns it or is above its owner), not merely through a
    /// channel grant.
    pub async fn controls_thing(
        &self,
        keys: &KeyRing,
        user: Uuid,
        thing: Uuid,
    ) -> ServiceResult<bool> {
        let mut client = pb::access_service_client::AccessServiceClient::new(self.channel.clone());
        let request = self.request(
            keys,
            pb::CheckAccessRequest {
                user: Some(pb::UserId {
                    value: user.to_string(),
                }),
                thing: Some(pb::ThingId {
                    value: thing.to_string(),
                }),
                permission: pb::ChannelPermission::SendCommands as i32,
            },
        )?;
        let resp = client
            .check_access(request)
            .await
            .map_err(unavailable)?
            .into_inner();
        Ok(resp.allowed && resp.via == "subtree")
    }
}

impl ObjectsClient {
    /// The Objects change feed after `after`.
    pub async fn watch_events(
        &self,
        keys: &KeyRing,
        after: u64,
    ) -> ServiceResult<tonic::Streaming<pb::ObjectEvent>> {
        let mut client = pb::event_service_client::EventServiceClient::new(self.channel.clone());
        let request = self.request(
            keys,
            pb::WatchEventsRequest {
                after_sequence: after,
            },
        )?;
        Ok(client
            .watch_events(request)
            .await
            .map_err(unavailable)?
            .into_inner())
    }
}
