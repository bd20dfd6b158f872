//! `sipmba users|things|channels`.

use std::collections::HashSet;

use serde_json::{Value, json};
use sipmba_proto::v1 as pb;
use uuid::Uuid;

use super::{CliError, Context, Ctx, Exit, Session, key_value, output, output::Rows, page};

/// `sipmba users`.
#[derive(Debug, clap::Subcommand)]
pub enum Users {
    /// Creates a user below you (or below `--parent`) and sets its first password.
    Create {
        /// The new user's login name: 3 to 64 characters of [A-Za-z0-9._@-].
        username: String,
        /// The parent (name or id; default: you).
        #[arg(long)]
        parent: Option<String>,
        /// Read the new user's password from standard input instead of asking.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Shows your subtree as a tree.
    Tree,
    /// Disables a user and everything below it: their tokens stop working within a second.
    Disable {
        /// Name or id.
        user: String,
    },
    /// Enables a user again.
    Enable {
        /// Name or id.
        user: String,
        /// Also enable every user below it.
        #[arg(long)]
        recursive: bool,
    },
    /// Sets (resets) the password of a user below you.
    SetPassword {
        /// Name or id.
        user: String,
        /// Read the password from standard input instead of asking.
        #[arg(long)]
        password_stdin: bool,
    },
}

/// `sipmba things`.
#[derive(Debug, clap::Subcommand)]
pub enum Things {
    /// Registers a thing.
    Create {
        /// Name, unique among your things.
        name: String,
        /// A label `key=value` (repeatable).
        #[arg(long = "label", short = 'l', value_parser = key_value)]
        labels: Vec<(String, Option<String>)>,
        /// Issue its client secret too (shown once).
        #[arg(long)]
        with_secret: bool,
    },
    /// Lists the things of your subtree with their presence.
    List {
        /// Only things with label `key` or `key=value` (repeatable).
        #[arg(long = "label", short = 'l', value_parser = key_value)]
        labels: Vec<(String, Option<String>)>,
    },
    /// Shows one thing.
    Show {
        /// Name or id.
        thing: String,
    },
    /// Issues a thing's client secret (shown once), or with --rotate replaces it.
    Secret {
        /// Name or id.
        thing: String,
        /// Replace the current secret: it stops working at once.
        #[arg(long)]
        rotate: bool,
    },
    /// Deletes a thing.
    Delete {
        /// Name or id.
        thing: String,
    },
}

/// `sipmba channels`.
#[derive(Debug, clap::Subcommand)]
pub enum Channels {
    /// Creates a channel.
    Create {
        /// Name, unique among your channels.
        name: String,
    },
    /// Lists the channels of your subtree.
    List,
    /// Connects things to a channel.
    Connect {
        /// Channel name or id.
        channel: String,
        /// Thing names or ids.
        #[arg(required = true)]
        things: Vec<String>,
    },
    /// Disconnects things from a channel.
    Disconnect {
        /// Channel name or id.
        channel: String,
        /// Thing names or ids.
        #[arg(required = true)]
        things: Vec<String>,
    },
    /// Grants a user permissions on the channel's things (replacing an earlier grant).
    Grant {
        /// Channel name or id.
        channel: String,
        /// The user receiving the grant: a username or id.
        user: String,
        /// read (telemetry) and/or command (send commands); repeatable.
        #[arg(long = "permission", short = 'p', value_enum, required = true)]
        permissions: Vec<Permission>,
        /// The grant ends after this long (e.g. 24h, 7d); without it, it lasts until revoked.
        #[arg(long, value_parser = super::duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// Removes a user's grant.
    Revoke {
        /// Channel name or id.
        channel: String,
        /// The user: a username or id.
        user: String,
    },
}

/// A channel permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Permission {
    /// Read the telemetry of the channel's things.
    Read,
    /// Send commands to the channel's things.
    Command,
}

fn thing_id(id: Uuid) -> Option<pb::ThingId> {
    Some(pb::ThingId {
        value: id.to_string(),
    })
}

fn user_id(id: Uuid) -> Option<pb::UserId> {
    Some(pb::UserId {
        value: id.to_string(),
    })
}

fn channel_id(id: Uuid) -> Option<pb::ChannelId> {
    Some(pb::ChannelId {
        value: id.to_string(),
    })
}

fn id_of(value: Option<&str>) -> Value {
    value.map_or(Value::Null, |v| Value::String(v.to_owned()))
}

fn state(state: i32) -> &'static str {
    match pb::ObjectState::try_from(state) {
        Ok(pb::ObjectState::Active) => "active",
        Ok(pb::ObjectState::Disabled) => "disabled",
        _ => "unknown",
    }
}

/// Every user of the caller's subtree (the caller included).
async fn all_users(s: &Session) -> Result<Vec<pb::User>, CliError> {
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

async fn all_channels(s: &Session) -> Result<Vec<pb::Channel>, CliError> {
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
fn pick<T>(
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
async fn resolve_user(s: &Session, name: &str) -> Result<Uuid, CliError> {
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

fn read_new_password(from_stdin: bool, username: &str) -> Result<String, CliError> {
    use std::io::IsTerminal;
    if from_stdin {
        return super::read_line();
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::usage(
            "no terminal to ask for the password: pass --password-stdin and pipe it in",
        ));
    }
    let first = rpassword::prompt_password(format!("new password for {username}: "))
        .map_err(|e| CliError::new(Exit::Failure, format!("reading the password: {e}")))?;
    let again = rpassword::prompt_password("again: ")
        .map_err(|e| CliError::new(Exit::Failure, format!("reading the password: {e}")))?;
    if first != again {
        return Err(CliError::usage("the two passwords differ"));
    }
    Ok(first)
}

async fn set_password(s: &Session, user: Uuid, password: String) -> Result<u32, CliError> {
    let answer = pb::account_service_client::AccountServiceClient::new(s.channel.clone())
        .set_user_password(s.req(pb::SetUserPasswordRequest {
            user: user_id(user),
            new_password: password,
        }))
        .await
        .doing("setting the password")?;
    Ok(answer.revoked_sessions)
}

/// Runs `sipmba users`.
pub async fn users(ctx: &Ctx, command: Users) -> Result<(), CliError> {
    let s = ctx.session().await?;
    let mut client = pb::user_service_client::UserServiceClient::new(s.channel.clone());
    match command {
        Users::Create {
            username,
            parent,
            password_stdin,
        } => {
            // Everything that can be refused is checked before the user exists.
            sipmba_objects::validate::username(&username)
                .map_err(|e| CliError::usage(e.to_string()))?;
            let password = read_new_password(password_stdin, &username)?;
            sipmba_sso::secrets::check_password("password", &password)
                .map_err(|e| CliError::usage(e.to_string()))?;
            let parent = match parent {
                Some(p) => resolve_user(&s, &p).await?,
                None => s.user,
            };
            let user = client
                .create_user(s.req(pb::CreateUserRequest {
                    username: username.clone(),
                    parent: user_id(parent),
                }))
                .await
                .doing("creating the user")?;
            let id = user
                .id
                .as_ref()
                .map(|i| i.value.clone())
                .unwrap_or_default();
            let id = Uuid::parse_str(&id)
                .map_err(|_| CliError::new(Exit::Failure, "the server returned no user id"))?;
            set_password(&s, id, password).await.map_err(|e| {
                e.hint(format!(
                    "the user exists without a password: `sipmba users set-password {username}`"
                ))
            })?;
            print_user(ctx, &user);
        }
        Users::Tree => {
            let users = all_users(&s).await?;
            tree(ctx, &s, &users);
        }
        Users::Disable { user } => {
            let id = resolve_user(&s, &user).await?;
            let answer = client
                .disable_user(s.req(pb::DisableUserRequest { id: user_id(id) }))
                .await
                .doing("disabling the user")?;
            output::print_object(
                ctx.format,
                &[
                    ("id", id.to_string().into()),
                    ("users_disabled", answer.users_disabled.into()),
                ],
            );
        }
        Users::Enable { user, recursive } => {
            let id = resolve_user(&s, &user).await?;
            let answer = client
                .enable_user(s.req(pb::EnableUserRequest {
                    id: user_id(id),
                    recursive,
                }))
                .await
                .doing("enabling the user")?;
            output::print_object(
                ctx.format,
                &[
                    ("id", id.to_string().into()),
                    ("users_enabled", answer.users_enabled.into()),
                ],
            );
        }
        Users::SetPassword {
            user,
            password_stdin,
        } => {
            let id = resolve_user(&s, &user).await?;
            let password = read_new_password(password_stdin, &user)?;
            let revoked = set_password(&s, id, password).await?;
            output::print_object(
                ctx.format,
                &[
                    ("id", id.to_string().into()),
                    ("revoked_sessions", revoked.into()),
                ],
            );
        }
    }
    Ok(())
}

fn print_user(ctx: &Ctx, user: &pb::User) {
    output::print_object(
        ctx.format,
        &[
            ("id", id_of(user.id.as_ref().map(|i| i.value.as_str()))),
            ("username", user.username.clone().into()),
            (
                "parent",
                id_of(user.parent.as_ref().map(|i| i.value.as_str())),
            ),
            ("state", state(user.effective_state).into()),
            ("created", output::time(user.created.as_ref())),
        ],
    );
}

/// Prints the subtree under the caller, children in name order.
fn tree(ctx: &Ctx, s: &Session, users: &[pb::User]) {
    let id = |u: &pb::User| u.id.as_ref().map(|i| i.value.clone()).unwrap_or_default();
    if ctx.format == output::Format::Json {
        let mut rows = Rows::new(&["id", "username", "parent", "depth", "state"]);
        for u in users {
            rows.push(vec![
                id(u).into(),
                u.username.clone().into(),
                id_of(u.parent.as_ref().map(|i| i.value.as_str())),
                u.depth.into(),
                state(u.effective_state).into(),
            ]);
        }
        rows.print(ctx.format, "");
        return;
    }
    let mut children: std::collections::HashMap<String, Vec<&pb::User>> = Default::default();
    for u in users {
        if let Some(parent) = &u.parent {
            children.entry(parent.value.clone()).or_default().push(u);
        }
    }
    for list in children.values_mut() {
        list.sort_by(|a, b| a.username.cmp(&b.username));
    }
    let label = |u: &pb::User| {
        let mut text = format!("{}  {}", u.username, id(u));
        if u.effective_state != pb::ObjectState::Active as i32 {
            text.push_str("  (disabled)");
        }
        text
    };
    let Some(me) = users.iter().find(|u| id(u) == s.user.to_string()) else {
        return;
    };
    output::out(label(me));
    print_children(&children, &id(me), "", &label);
}

/// Prints the children of `of` below `prefix`, each followed by its own subtree.
fn print_children(
    children: &std::collections::HashMap<String, Vec<&pb::User>>,
    of: &str,
    prefix: &str,
    label: &dyn Fn(&pb::User) -> String,
) {
    let Some(list) = children.get(of) else {
        return;
    };
    for (i, child) in list.iter().enumerate() {
        let last = i + 1 == list.len();
        let (branch, next) = if last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        output::out(format_args!("{prefix}{branch}{}", label(child)));
        let id = child
            .id
            .as_ref()
            .map(|i| i.value.as_str())
            .unwrap_or_default();
        print_children(children, id, &format!("{prefix}{next}"), label);
    }
}

/// Runs `sipmba things`.
pub async fn things(ctx: &Ctx, command: Things) -> Result<(), CliError> {
    let s = ctx.session().await?;
    let mut client = pb::thing_service_client::ThingServiceClient::new(s.channel.clone());
    match command {
        Things::Create {
            name,
            labels,
            with_secret,
        } => {
            let thing = client
                .create_thing(
                    s.req(pb::CreateThingRequest {
                        name,
                        owner: None,
                        labels: labels
                            .into_iter()
                            .map(|(k, v)| (k, v.unwrap_or_default()))
                            .collect(),
                    }),
                )
                .await
                .doing("creating the thing")?;
            let mut fields = thing_fields(ctx.format, &thing);
            if with_secret {
                let id = thing
                    .id
                    .as_ref()
                    .map(|i| i.value.clone())
                    .unwrap_or_default();
                let id = Uuid::parse_str(&id)
                    .map_err(|_| CliError::new(Exit::Failure, "the server returned no id"))?;
                let (client_id, secret) = thing_secret(&s, id, false).await?;
                fields.push(("client_id", client_id.into()));
                fields.push(("client_secret", secret.into()));
            }
            output::print_object(ctx.format, &fields);
        }
        Things::List { labels } => {
            let spinner = output::Spinner::start("listing things");
            let (things, shared) = all_things(&s, &labels).await?;
            let (theirs, own): (Vec<pb::Thing>, Vec<pb::Thing>) = things
                .iter()
                .cloned()
                .partition(|t| t.id.as_ref().is_some_and(|id| shared.contains(&id.value)));
            let mut presence = presence(&s, &own).await?;
            // A thing shared for commands only has no presence to show to this user.
            for thing in &theirs {
                match self::presence(&s, std::slice::from_ref(thing)).await {
                    Ok(found) => presence.extend(found),
                    Err(e) if e.exit == Exit::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            drop(spinner);
            let mut rows = Rows::new(&[
                "id",
                "name",
                "state",
                "online",
                "last_seen",
                "labels",
                "shared",
            ]);
            for thing in &things {
                let id = thing
                    .id
                    .as_ref()
                    .map(|i| i.value.clone())
                    .unwrap_or_default();
                let seen = presence.get(&id);
                let last_seen = match ctx.format {
                    output::Format::Json => output::time(seen.and_then(|p| p.last_seen.as_ref())),
                    output::Format::Table => {
                        output::ago(seen.and_then(|p| p.last_seen.as_ref())).into()
                    }
                };
                rows.push(vec![
                    id.clone().into(),
                    thing.name.clone().into(),
                    state(thing.effective_state).into(),
                    match seen {
                        Some(p) => p.online.into(),
                        None => Value::Null,
                    },
                    last_seen,
                    labels_value(ctx.format, &thing.labels),
                    shared.contains(&id).into(),
                ]);
            }
            rows.print(
                ctx.format,
                "no things yet: create one with `sipmba things create <name>`",
            );
        }
        Things::Show { thing } => {
            let id = resolve_thing(&s, &thing).await?;
            let thing = client
                .get_thing(s.req(pb::GetThingRequest { id: thing_id(id) }))
                .await
                .doing("reading the thing")?;
            let mut fields = thing_fields(ctx.format, &thing);
            if let Some(p) = presence(&s, std::slice::from_ref(&thing))
                .await?
                .remove(&id.to_string())
            {
                fields.push(("online", p.online.into()));
                fields.push(("last_seen", output::time(p.last_seen.as_ref())));
                fields.push(("last_seq", p.last_seq.into()));
            }
            output::print_object(ctx.format, &fields);
        }
        Things::Secret { thing, rotate } => {
            let id = resolve_thing(&s, &thing).await?;
            let (client_id, secret) = thing_secret(&s, id, rotate).await?;
            output::print_object(
                ctx.format,
                &[
                    ("thing", id.to_string().into()),
                    ("client_id", client_id.into()),
                    ("client_secret", secret.into()),
                ],
            );
            if ctx.format == output::Format::Table {
                eprintln!("the secret is shown only now: keep it for the thing's agent");
            }
        }
        Things::Delete { thing } => {
            let id = resolve_thing(&s, &thing).await?;
            client
                .delete_thing(s.req(pb::DeleteThingRequest { id: thing_id(id) }))
                .await
                .doing("deleting the thing")?;
            eprintln!("deleted thing {id}");
        }
    }
    Ok(())
}

fn labels_value(
    format: output::Format,
    labels: &std::collections::HashMap<String, String>,
) -> Value {
    match format {
        output::Format::Json => json!(labels),
        output::Format::Table => {
            let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            pairs.sort();
            pairs.join(",").into()
        }
    }
}

fn thing_fields(format: output::Format, thing: &pb::Thing) -> Vec<(&'static str, Value)> {
    vec![
        ("id", id_of(thing.id.as_ref().map(|i| i.value.as_str()))),
        ("name", thing.name.clone().into()),
        (
            "owner",
            id_of(thing.owner.as_ref().map(|i| i.value.as_str())),
        ),
        ("state", state(thing.effective_state).into()),
        ("labels", labels_value(format, &thing.labels)),
        ("created", output::time(thing.created.as_ref())),
    ]
}

/// Issues (or rotates) a thing's secret: `(client_id, secret)`.
async fn thing_secret(s: &Session, id: Uuid, rotate: bool) -> Result<(String, String), CliError> {
    let mut accounts = pb::account_service_client::AccountServiceClient::new(s.channel.clone());
    if rotate {
        let answer = accounts
            .rotate_thing_secret(s.req(pb::RotateThingSecretRequest {
                thing: thing_id(id),
            }))
            .await
            .doing("rotating the secret")?;
        Ok((answer.client_id, answer.client_secret))
    } else {
        let answer = accounts
            .issue_thing_secret(s.req(pb::IssueThingSecretRequest {
                thing: thing_id(id),
            }))
            .await
            .map_err(|status| {
                let e = CliError::status("issuing the secret", &status);
                if status.code() == tonic::Code::FailedPrecondition {
                    e.hint("to replace it, add --rotate")
                } else {
                    e
                }
            })?
            .into_inner();
        Ok((answer.client_id, answer.client_secret))
    }
}

/// Presence of `things`, by thing id (one call per 100). Missing when Processing does not run.
async fn presence(
    s: &Session,
    things: &[pb::Thing],
) -> Result<std::collections::HashMap<String, pb::ThingPresence>, CliError> {
    let mut client = pb::presence_service_client::PresenceServiceClient::new(s.channel.clone());
    let mut found = std::collections::HashMap::new();
    for chunk in things.chunks(100) {
        let answer = client
            .get_presence(s.req(pb::GetPresenceRequest {
                things: chunk.iter().filter_map(|t| t.id.clone()).collect(),
            }))
            .await;
        match answer {
            Ok(answer) => {
                for p in answer.into_inner().presences {
                    if let Some(id) = &p.thing {
                        found.insert(id.value.clone(), p);
                    }
                }
            }
            // Without processing there is no presence to show; the listing still works.
            Err(status) if status.code() == tonic::Code::Unimplemented => break,
            Err(status) => return Err(CliError::status("reading presence", &status)),
        }
    }
    Ok(found)
}

/// Runs `sipmba channels`.
pub async fn channels(ctx: &Ctx, command: Channels) -> Result<(), CliError> {
    let s = ctx.session().await?;
    let mut client = pb::channel_service_client::ChannelServiceClient::new(s.channel.clone());
    let channel = match command {
        Channels::Create { name } => client
            .create_channel(s.req(pb::CreateChannelRequest { name, owner: None }))
            .await
            .doing("creating the channel")?,
        Channels::List => {
            let mut rows = Rows::new(&["id", "name", "things", "grants"]);
            for c in all_channels(&s).await? {
                rows.push(vec![
                    id_of(c.id.as_ref().map(|i| i.value.as_str())),
                    c.name.clone().into(),
                    c.things.len().into(),
                    c.grants.len().into(),
                ]);
            }
            rows.print(
                ctx.format,
                "no channels yet: create one with `sipmba channels create <name>`",
            );
            return Ok(());
        }
        Channels::Connect { channel, things } | Channels::Disconnect { channel, things }
            if things.is_empty() =>
        {
            return Err(CliError::usage(format!(
                "name the things to (dis)connect to {channel}"
            )));
        }
        Channels::Connect { channel, things } => {
            connections(&s, &mut client, &channel, &things, true).await?
        }
        Channels::Disconnect { channel, things } => {
            connections(&s, &mut client, &channel, &things, false).await?
        }
        Channels::Grant {
            channel,
            user,
            permissions,
            expires_in,
        } => {
            let id = resolve_channel(&s, &channel).await?;
            let grantee = resolve_user(&s, &user).await?;
            let expires =
                expires_in.map(|d| prost_types::Timestamp::from(std::time::SystemTime::now() + d));
            client
                .grant_access(
                    s.req(pb::GrantAccessRequest {
                        channel: channel_id(id),
                        grantee: user_id(grantee),
                        permissions: permissions
                            .iter()
                            .map(|p| match p {
                                Permission::Read => pb::ChannelPermission::ReadTelemetry as i32,
                                Permission::Command => pb::ChannelPermission::SendCommands as i32,
                            })
                            .collect(),
                        expires,
                    }),
                )
                .await
                .doing("granting access")?
        }
        Channels::Revoke { channel, user } => {
            let id = resolve_channel(&s, &channel).await?;
            let grantee = resolve_user(&s, &user).await?;
            client
                .revoke_grant(s.req(pb::RevokeGrantRequest {
                    channel: channel_id(id),
                    grantee: user_id(grantee),
                }))
                .await
                .doing("revoking the grant")?
        }
    };
    print_channel(ctx, &channel);
    Ok(())
}

/// Connects (or disconnects) `things` to `channel`; returns the channel as it is after.
async fn connections(
    s: &Session,
    client: &mut pb::channel_service_client::ChannelServiceClient<super::session::Platform>,
    channel: &str,
    things: &[String],
    connect: bool,
) -> Result<pb::Channel, CliError> {
    let id = resolve_channel(s, channel).await?;
    let mut last = pb::Channel::default();
    for thing in resolve_things(s, things).await? {
        last = if connect {
            client
                .connect_thing(s.req(pb::ConnectThingRequest {
                    channel: channel_id(id),
                    thing: thing_id(thing),
                }))
                .await
                .doing("connecting the thing")?
        } else {
            client
                .disconnect_thing(s.req(pb::DisconnectThingRequest {
                    channel: channel_id(id),
                    thing: thing_id(thing),
                }))
                .await
                .doing("disconnecting the thing")?
        };
    }
    Ok(last)
}

fn print_channel(ctx: &Ctx, c: &pb::Channel) {
    let grants: Vec<Value> = c
        .grants
        .iter()
        .map(|g| {
            let permissions: Vec<&str> = g
                .permissions
                .iter()
                .map(|p| match pb::ChannelPermission::try_from(*p) {
                    Ok(pb::ChannelPermission::ReadTelemetry) => "read",
                    Ok(pb::ChannelPermission::SendCommands) => "command",
                    _ => "unknown",
                })
                .collect();
            match ctx.format {
                output::Format::Json => json!({
                    "grantee": g.grantee.as_ref().map(|i| i.value.clone()),
                    "permissions": permissions,
                    "expires": output::time(g.expires.as_ref()),
                }),
                output::Format::Table => format!(
                    "{} {} {}",
                    g.grantee.as_ref().map_or("?", |i| i.value.as_str()),
                    permissions.join("+"),
                    output::time(g.expires.as_ref())
                        .as_str()
                        .map_or("(no expiry)".to_owned(), |t| format!("until {t}"))
                )
                .into(),
            }
        })
        .collect();
    let things: Vec<Value> = c.things.iter().map(|t| t.value.clone().into()).collect();
    output::print_object(
        ctx.format,
        &[
            ("id", id_of(c.id.as_ref().map(|i| i.value.as_str()))),
            ("name", c.name.clone().into()),
            ("owner", id_of(c.owner.as_ref().map(|i| i.value.as_str()))),
            ("things", Value::Array(things)),
            ("grants", Value::Array(grants)),
            ("created", output::time(c.created.as_ref())),
        ],
    );
}
