//! The one client of Objects other services use, with the calling service's own token: who may
//! do what to which thing (Control before queuing a command, Processing before showing
//! telemetry), effective states and the change feed (sso), and the things the operator
//! registers for Things outside the cluster.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use crate::{ServiceError, ServiceResult};
use sipmba_auth::{
    client::{ServiceCredentials, bearer},
    peer_tls::PeerCa,
};
use sipmba_proto::v1 as pb;
use tonic::{Code, Request, Status, transport::Channel};
use uuid::Uuid;

/// Where a service's own access token comes from.
#[derive(Clone)]
pub enum ServiceToken {
    /// `client_credentials` at sso, renewed before expiry.
    Credentials(Arc<ServiceCredentials>),
    /// Minted by the calling service itself (sso signs its own), cached by the minter.
    Minted(Arc<dyn Fn() -> ServiceResult<String> + Send + Sync>),
    /// A fixed token (tests).
    Fixed(String),
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        match self {
            Self::Credentials(c) => f.debug_tuple("Credentials").field(c).finish(),
            Self::Minted(_) => f.write_str("Minted(..)"),
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
            Self::Minted(mint) => mint(),
            Self::Fixed(t) => Ok(t.clone()),
        }
    }

    /// `msg` as a request carrying this service's bearer token.
    pub async fn request<T>(&self, msg: T) -> ServiceResult<Request<T>> {
        Ok(bearer(&self.get().await?, msg))
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

/// A user's or a thing's effective state, as Objects computes it (its own and every ancestor's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    /// The effective state.
    pub state: pb::ObjectState,
    /// A thing's owner (`None` for a user).
    pub owner: Option<Uuid>,
}

impl Effective {
    /// Effectively ACTIVE.
    pub fn active(&self) -> bool {
        self.state == pb::ObjectState::Active
    }
}

/// The client of Objects.
#[derive(Debug, Clone)]
pub struct ObjectsClient {
    channel: Channel,
    token: ServiceToken,
}

/// `status` from Objects as a service error: the codes in `passed` keep their meaning for the
/// caller; any other means Objects cannot answer `what` now.
fn answer(what: &str, status: &Status, passed: &[Code]) -> ServiceError {
    let message = status.message().to_owned();
    match status.code() {
        code if !passed.contains(&code) => {
            ServiceError::Unavailable(format!("objects cannot answer {what}: {message}"))
        }
        Code::NotFound => ServiceError::NotFound(message),
        Code::AlreadyExists => ServiceError::AlreadyExists(message),
        Code::InvalidArgument => ServiceError::InvalidArgument(message),
        Code::PermissionDenied => ServiceError::PermissionDenied(message),
        Code::FailedPrecondition => ServiceError::FailedPrecondition(message),
        _ => ServiceError::Unavailable(format!("objects cannot answer {what}: {message}")),
    }
}

fn user_id(user: Uuid) -> Option<pb::UserId> {
    Some(pb::UserId {
        value: user.to_string(),
    })
}

fn thing_id(thing: Uuid) -> Option<pb::ThingId> {
    Some(pb::ThingId {
        value: thing.to_string(),
    })
}

fn parsed(id: Option<String>, what: &str) -> ServiceResult<Uuid> {
    id.and_then(|id| Uuid::parse_str(&id).ok())
        .ok_or_else(|| ServiceError::Internal(format!("objects returned {what} without an id")))
}

impl ObjectsClient {
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

    fn access(&self) -> pb::access_service_client::AccessServiceClient<Channel> {
        pb::access_service_client::AccessServiceClient::new(self.channel.clone())
    }

    fn users(&self) -> pb::user_service_client::UserServiceClient<Channel> {
        pb::user_service_client::UserServiceClient::new(self.channel.clone())
    }

    fn things(&self) -> pb::thing_service_client::ThingServiceClient<Channel> {
        pb::thing_service_client::ThingServiceClient::new(self.channel.clone())
    }

    async fn check_access(
        &self,
        user: Uuid,
        thing: Uuid,
        permission: pb::ChannelPermission,
    ) -> ServiceResult<pb::CheckAccessResponse> {
        let request = self
            .request(pb::CheckAccessRequest {
                user: user_id(user),
                thing: thing_id(thing),
                permission: permission as i32,
            })
            .await?;
        Ok(self
            .access()
            .check_access(request)
            .await
            .map_err(|s| answer("an access check", &s, &[]))?
            .into_inner())
    }

    /// May `user` exercise `permission` on `thing`?
    pub async fn check(
        &self,
        user: Uuid,
        thing: Uuid,
        permission: pb::ChannelPermission,
    ) -> ServiceResult<Decision> {
        let answer = self.check_access(user, thing, permission).await?;
        if answer.allowed {
            return Ok(Decision::Allowed);
        }
        Ok(match pb::AccessDenial::try_from(answer.denial) {
            Ok(pb::AccessDenial::PermissionMissing) => Decision::PermissionMissing,
            Ok(pb::AccessDenial::ThingInactive) => Decision::ThingInactive,
            _ => Decision::NotReachable,
        })
    }

    /// True when `user` controls `thing` (owns it or is above its owner), not merely through a
    /// channel grant.
    pub async fn controls_thing(&self, user: Uuid, thing: Uuid) -> ServiceResult<bool> {
        let answer = self
            .check_access(user, thing, pb::ChannelPermission::SendCommands)
            .await?;
        Ok(answer.allowed && answer.via == "subtree")
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
                user: user_id(user),
                selection: Some(selection),
                permissions: permissions.iter().map(|p| *p as i32).collect(),
            })
            .await?;
        let answer = match self.access().list_accessible_things(request).await {
            Ok(answer) => answer.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(answer("a selection", &s, &[Code::InvalidArgument])),
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

    /// The effective state of `thing`, with its owner; `None` when it does not exist.
    pub async fn thing(&self, thing: Uuid) -> ServiceResult<Option<Effective>> {
        self.effective(pb::get_effective_state_request::Subject::Thing(
            pb::ThingId {
                value: thing.to_string(),
            },
        ))
        .await
    }

    /// The effective state of `user`; `None` when it does not exist.
    pub async fn user(&self, user: Uuid) -> ServiceResult<Option<Effective>> {
        self.effective(pb::get_effective_state_request::Subject::User(pb::UserId {
            value: user.to_string(),
        }))
        .await
    }

    async fn effective(
        &self,
        subject: pb::get_effective_state_request::Subject,
    ) -> ServiceResult<Option<Effective>> {
        let request = self
            .request(pb::GetEffectiveStateRequest {
                subject: Some(subject),
            })
            .await?;
        match self.access().get_effective_state(request).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                Ok(Some(Effective {
                    state: pb::ObjectState::try_from(answer.effective_state)
                        .unwrap_or(pb::ObjectState::Disabled),
                    owner: answer.owner.and_then(|o| Uuid::parse_str(&o.value).ok()),
                }))
            }
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(answer("an effective state", &s, &[])),
        }
    }

    /// Creates a root user; ALREADY_EXISTS and INVALID_ARGUMENT come back as such.
    pub async fn create_root_user(&self, username: &str) -> ServiceResult<Uuid> {
        let request = self
            .request(pb::CreateUserRequest {
                username: username.to_owned(),
                parent: None,
            })
            .await?;
        let user = self
            .users()
            .create_user(request)
            .await
            .map_err(|s| {
                answer(
                    "a registration",
                    &s,
                    &[Code::AlreadyExists, Code::InvalidArgument],
                )
            })?
            .into_inner();
        parsed(user.id.map(|i| i.value), "a user")
    }

    /// The username of `user`; `None` when it does not exist or, asked with `as_user` (a user's
    /// own access token instead of this service's), when it is not in that user's subtree.
    pub async fn username(
        &self,
        as_user: Option<&str>,
        user: Uuid,
    ) -> ServiceResult<Option<String>> {
        let msg = pb::GetUserRequest { id: user_id(user) };
        let request = match as_user {
            Some(token) => bearer(token, msg),
            None => self.request(msg).await?,
        };
        match self.users().get_user(request).await {
            Ok(found) => Ok(Some(found.into_inner().username)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(answer("a user's name", &s, &[Code::PermissionDenied])),
        }
    }

    /// The Objects change feed after `after` (`FailedPrecondition` when Objects no longer holds
    /// that position).
    pub async fn watch_events(
        &self,
        after: u64,
    ) -> ServiceResult<tonic::Streaming<pb::ObjectEvent>> {
        let request = self
            .request(pb::WatchEventsRequest {
                after_sequence: after,
            })
            .await?;
        Ok(
            pb::event_service_client::EventServiceClient::new(self.channel.clone())
                .watch_events(request)
                .await
                .map_err(|s| answer("the change feed", &s, &[Code::FailedPrecondition]))?
                .into_inner(),
        )
    }

    /// Registers a thing named `name` for `owner`, or finds the one registered before (its
    /// labels brought up to date); returns its id.
    pub async fn register_thing(
        &self,
        owner: Uuid,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> ServiceResult<Uuid> {
        let created = self
            .things()
            .create_thing(
                self.request(pb::CreateThingRequest {
                    name: name.to_owned(),
                    owner: user_id(owner),
                    labels: labels.clone().into_iter().collect(),
                })
                .await?,
            )
            .await;
        let thing = match created {
            Ok(thing) => thing.into_inner(),
            Err(s) if s.code() == Code::AlreadyExists => {
                let existing = self.find_thing(owner, name).await?;
                if existing.labels.iter().collect::<BTreeMap<_, _>>()
                    != labels.iter().collect::<BTreeMap<_, _>>()
                {
                    self.things()
                        .update_thing(
                            self.request(pb::UpdateThingRequest {
                                id: existing.id.clone(),
                                name: None,
                                labels: labels.clone().into_iter().collect(),
                                replace_labels: true,
                            })
                            .await?,
                        )
                        .await
                        .map_err(|s| answer("a thing's labels", &s, &[Code::InvalidArgument]))?;
                }
                existing
            }
            Err(s) => {
                return Err(answer(
                    "a thing's registration",
                    &s,
                    &[
                        Code::InvalidArgument,
                        Code::NotFound,
                        Code::FailedPrecondition,
                    ],
                ));
            }
        };
        parsed(thing.id.map(|i| i.value), "a thing")
    }

    async fn find_thing(&self, owner: Uuid, name: &str) -> ServiceResult<pb::Thing> {
        let mut token = String::new();
        loop {
            let page = self
                .things()
                .list_things(
                    self.request(pb::ListThingsRequest {
                        scope: Some(pb::list_things_request::Scope::Owner(pb::UserId {
                            value: owner.to_string(),
                        })),
                        labels: Vec::new(),
                        page: Some(pb::PageRequest {
                            page_size: 100,
                            page_token: token,
                        }),
                    })
                    .await?,
                )
                .await
                .map_err(|s| answer("a thing's lookup", &s, &[]))?
                .into_inner();
            if let Some(thing) = page.things.into_iter().find(|t| t.name == name) {
                return Ok(thing);
            }
            if page.next_page_token.is_empty() {
                // Created by someone, then gone before this lookup: a retry settles it.
                return Err(ServiceError::Unavailable(format!(
                    "no thing {name:?} of {owner}, though one was said to exist"
                )));
            }
            token = page.next_page_token;
        }
    }

    /// Deletes `thing`; one that is gone already counts as deleted.
    pub async fn delete_thing(&self, thing: Uuid) -> ServiceResult<()> {
        let deleted = self
            .things()
            .delete_thing(
                self.request(pb::DeleteThingRequest {
                    id: thing_id(thing),
                })
                .await?,
            )
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(answer("a thing's deletion", &s, &[Code::PermissionDenied])),
        }
    }
}
