//! `sipmba channels`.

use serde_json::{Value, json};
use sipmba_proto::v1 as pb;

use super::{CliError, Context, Ctx, Session, output, output::Rows};

use super::names::*;

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
pub(super) async fn connections(
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

pub(super) fn print_channel(ctx: &Ctx, c: &pb::Channel) {
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
