//! Naming what the commands act on: things, users and channels by name or id, and the
//! listings behind the names.

use std::collections::HashSet;

use serde_json::Value;
use sipmba_proto::v1 as pb;
use uuid::Uuid;

use super::{CliError, Context, Exit, Session, page};

pub(super) fn thing_id(id: Uuid) -> Option<pb::ThingId> {
    Some(pb::ThingId {
        value: id.to_string(),
    })
}

pub(super) fn user_id(id: Uuid) -> Option<pb::UserId> {
    Some(pb::UserId {
        value: id.to_string(),
    })
}

pub(super) fn channel_id(id: Uuid) -> Option<pb::ChannelId> {
    Some(pb::ChannelId {
        value: id.to_string(),
    })
}

pub(super) fn id_of(value: Option<&str>) -> Value {
    value.map_or(Value::Null, |v| Value::String(v.to_owned()))
}

pub(super) fn state(state: i32) -> &'static str {
    match pb::ObjectState::try_from(state) {
        Ok(pb::ObjectState::Active) => "active",
        Ok(pb::ObjectState::Disabled) => "disabled",
        _ => "unknown",
    }
}

/// Every user of the caller's subtree (the caller included).
pub(super) async fn all_users(s: &Session) -> Result<Vec<pb::User>, CliError> {
    let mut client = pb::user_service_client::UserServiceClient::new(s.channel.clone());
    let (mut users, mut token) = (Vec::new(), String::new());
    loop {
        let answer = client
            .list_users(s.req(pb::ListUsersRequest {
                root: Some(s.user_id()),
                children_only: false,
                page: page(token),
            }))
            .await
            .doing("listing users")?;
        users.extend(answer.users);
        if answer.next_page_token.is_empty() {
            return Ok(users);
        }
        token = answer.next_page_token;
    }
}

/// Every thing the caller reaches (its subtree's and those shared with it) matching `labels`,
/// and the ids of the shared ones.
pub async fn all_things(
    s: &Session,
    labels: &[(String, Option<String>)],
) -> Result<(Vec<pb::Thing>, HashSet<String>), CliError> {
    let mut client = pb::thing_service_client::ThingServiceClient::new(s.channel.clone());
    let selectors: Vec<pb::LabelSelector> = labels
        .iter()
        .map(|(key, value)| pb::LabelSelector {
            key: key.clone(),
            value: value.clone(),
        })
        .collect();
    let (mut things, mut shared, mut token) = (Vec::new(), HashSet::new(), String::new());
    loop {
        let answer = client
            .list_things(s.req(pb::ListThingsRequest {
                scope: Some(pb::list_things_request::Scope::Reachable(s.user_id())),
                labels: selectors.clone(),
                page: page(token),
            }))
            .await
            .doing("listing things")?;
        things.extend(answer.things);
        shared.extend(answer.shared.into_iter().map(|id| id.value));
        if answer.next_page_token.is_empty() {
            return Ok((things, shared));
        }
        token = answer.next_page_token;
    }
}

pub(super) async fn all_channels(s: &Session) -> Result<Vec<pb::Channel>, CliError> {
    let mut client = pb::channel_service_client::ChannelServiceClient::new(s.channel.clone());
    let (mut channels, mut token) = (Vec::new(), String::new());
    loop {
        let answer = client
            .list_channels(s.req(pb::ListChannelsRequest {
                subtree: Some(s.user_id()),
                page: page(token),
            }))
            .await
            .doing("listing channels")?;
        channels.extend(answer.channels);
        if answer.next_page_token.is_empty() {
            return Ok(channels);
        }
        token = answer.next_page_token;
    }
}

/// Picks the one object named `name`; an id is taken as it is.
pub(super) fn pick<T>(
    kind: &str,
    name: &str,
    list: &[T],
    name_of: impl Fn(&T) -> &str,
    id_of: impl Fn(&T) -> Option<String>,
    list_command: &str,
) -> Result<Uuid, CliError> {
    let found: Vec<&T> = list.iter().filter(|t| name_of(t) == name).collect();
    match found.len() {
        0 => Err(
            CliError::new(Exit::NotFound, format!("no {kind} named {name:?}"))
                .hint(format!("see `{list_command}`")),
        ),
        1 => found
            .first()
            .and_then(|t| id_of(t))
            .and_then(|id| Uuid::parse_str(&id).ok())
            .ok_or_else(|| CliError::new(Exit::Failure, format!("the {kind} has no id"))),
        _ => {
            let ids: Vec<String> = found.iter().filter_map(|t| id_of(t)).collect();
            Err(CliError::usage(format!(
                "{} {kind}s are named {name:?} (ids {}); give the id instead",
                found.len(),
                ids.join(", ")
            )))
        }
    }
}

/// A thing by name (of those the caller reaches) or id.
pub async fn resolve_thing(s: &Session, name: &str) -> Result<Uuid, CliError> {
    let ids = resolve_things(s, std::slice::from_ref(&name.to_owned())).await?;
    ids.into_iter()
        .next()
        .ok_or_else(|| CliError::new(Exit::Failure, "no thing resolved"))
}

/// Things by name (of those the caller reaches) or id; the reachable things are listed once,
/// and only when a name needs it.
pub async fn resolve_things(s: &Session, names: &[String]) -> Result<Vec<Uuid>, CliError> {
    let mut listed: Option<Vec<pb::Thing>> = None;
    let mut ids = Vec::with_capacity(names.len());
    for name in names {
        if let Ok(id) = Uuid::parse_str(name) {
            ids.push(id);
            continue;
        }
        let things = match &listed {
            Some(things) => things,
            None => listed.insert(all_things(s, &[]).await?.0),
        };
        ids.push(pick(
            "thing",
            name,
            things,
            |t| &t.name,
            |t| t.id.as_ref().map(|i| i.value.clone()),
            "sipmba things list",
        )?);
    }
    Ok(ids)
}

/// A channel by name (of the caller's subtree) or id.
pub async fn resolve_channel(s: &Session, name: &str) -> Result<Uuid, CliError> {
    if let Ok(id) = Uuid::parse_str(name) {
        return Ok(id);
    }
    pick(
        "channel",
        name,
        &all_channels(s).await?,
        |c| &c.name,
        |c| c.id.as_ref().map(|i| i.value.clone()),
        "sipmba channels list",
    )
}

/// A user by name (of the caller's subtree) or id; a user elsewhere must be given by id.
pub(super) async fn resolve_user(s: &Session, name: &str) -> Result<Uuid, CliError> {
    if let Ok(id) = Uuid::parse_str(name) {
        return Ok(id);
    }
    pick(
        "user",
        name,
        &all_users(s).await?,
        |u| &u.username,
        |u| u.id.as_ref().map(|i| i.value.clone()),
        "sipmba users tree",
    )
    .map_err(|e| match e.exit {
        Exit::NotFound => e.hint("a user outside your subtree must be given by id"),
        _ => e,
    })
}
