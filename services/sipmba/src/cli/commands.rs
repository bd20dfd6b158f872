//! `sipmba commands`.

use std::time::Duration;

use serde_json::Value;
use sipmba_proto::v1 as pb;
use uuid::Uuid;

use super::{
    CliError, Context, Ctx, Exit, Session, duration,
    names::resolve_thing,
    output,
    output::{Format, Rows},
    page, pb_duration,
};

/// `sipmba commands`.
#[derive(Debug, clap::Subcommand)]
pub enum Commands {
    /// Sends a command to a thing; it is delivered when the thing next wakes.
    Send {
        /// Thing name or id.
        thing: String,
        /// The command, e.g. `fan.on` or `agent.ping`.
        name: String,
        /// The payload (text, as the thing's agent reads it).
        #[arg(long, default_value = "")]
        payload: String,
        /// The command expires if not acknowledged within this (default: the server's, 1h).
        #[arg(long, value_parser = duration)]
        ttl: Option<Duration>,
        /// Wait until the thing acknowledges it (or it fails or expires).
        #[arg(long)]
        wait: bool,
        /// Longest wait with --wait.
        #[arg(long, value_parser = duration, default_value = "10m")]
        timeout: Duration,
    },
    /// Shows a command's state.
    Status {
        /// The command id.
        id: Uuid,
    },
    /// Follows a command until it is ACKED (exit 0), FAILED or EXPIRED (exit 7).
    Watch {
        /// The command id.
        id: Uuid,
        /// Longest wait (exit 7 after it).
        #[arg(long, value_parser = duration, default_value = "10m")]
        timeout: Duration,
    },
    /// Lists a thing's commands, newest first.
    List {
        /// Thing name or id.
        thing: String,
    },
}

pub(super) fn command_state(state: i32) -> &'static str {
    match pb::CommandState::try_from(state) {
        Ok(pb::CommandState::Queued) => "QUEUED",
        Ok(pb::CommandState::Delivered) => "DELIVERED",
        Ok(pb::CommandState::Acked) => "ACKED",
        Ok(pb::CommandState::Failed) => "FAILED",
        Ok(pb::CommandState::Expired) => "EXPIRED",
        _ => "UNKNOWN",
    }
}

pub(super) fn is_final(state: i32) -> bool {
    matches!(
        pb::CommandState::try_from(state),
        Ok(pb::CommandState::Acked | pb::CommandState::Failed | pb::CommandState::Expired)
    )
}

pub(super) fn command_fields(c: &pb::Command) -> Vec<(&'static str, Value)> {
    let issuer = match c.issuer.as_ref().and_then(|i| i.issuer.as_ref()) {
        Some(pb::command_issuer::Issuer::User(u)) => format!("user {}", u.value),
        Some(pb::command_issuer::Issuer::Rule(r)) => format!("rule {}", r.value),
        Some(pb::command_issuer::Issuer::Service(s)) => format!("service {s}"),
        None => String::new(),
    };
    vec![
        ("id", c.id.as_ref().map(|i| i.value.clone()).into()),
        ("thing", c.thing.as_ref().map(|i| i.value.clone()).into()),
        ("name", c.name.clone().into()),
        ("state", command_state(c.state).into()),
        ("detail", c.detail.clone().into()),
        ("issuer", issuer.into()),
        ("created", output::time(c.created.as_ref())),
        ("updated", output::time(c.updated.as_ref())),
        ("expires", output::time(c.expires.as_ref())),
    ]
}

pub(super) fn command_id(id: Uuid) -> Option<pb::CommandId> {
    Some(pb::CommandId {
        value: id.to_string(),
    })
}

/// Runs `sipmba commands`.
pub async fn commands(ctx: &Ctx, command: Commands) -> Result<(), CliError> {
    let s = ctx.session().await?;
    let mut client = pb::control_service_client::ControlServiceClient::new(s.channel.clone());
    match command {
        Commands::Send {
            thing,
            name,
            payload,
            ttl,
            wait,
            timeout,
        } => {
            let thing = resolve_thing(&s, &thing).await?;
            let sent = client
                .send_command(s.req(pb::SendCommandRequest {
                    thing: Some(pb::ThingId {
                        value: thing.to_string(),
                    }),
                    name,
                    payload: payload.into_bytes(),
                    ttl: ttl.map(pb_duration),
                    idempotency_key: Uuid::new_v4().to_string(),
                    on_behalf_of: None,
                }))
                .await
                .doing("sending the command")?;
            let id = sent
                .id
                .as_ref()
                .and_then(|i| Uuid::parse_str(&i.value).ok())
                .ok_or_else(|| CliError::new(Exit::Failure, "the server returned no id"))?;
            if wait {
                return watch(ctx, &s, id, timeout).await;
            }
            output::print_object(ctx.format, &command_fields(&sent));
            if ctx.format == Format::Table {
                eprintln!("follow it with `sipmba commands watch {id}`");
            }
        }
        Commands::Status { id } => {
            let c = client
                .get_command(s.req(pb::GetCommandRequest { id: command_id(id) }))
                .await
                .doing("reading the command")?;
            output::print_object(ctx.format, &command_fields(&c));
        }
        Commands::Watch { id, timeout } => return watch(ctx, &s, id, timeout).await,
        Commands::List { thing } => {
            let thing = resolve_thing(&s, &thing).await?;
            let answer = client
                .list_commands(s.req(pb::ListCommandsRequest {
                    thing: Some(pb::ThingId {
                        value: thing.to_string(),
                    }),
                    states: Vec::new(),
                    page: page(String::new()),
                }))
                .await
                .doing("listing commands")?;
            let mut rows = Rows::new(&["id", "name", "state", "created", "detail"]);
            for c in &answer.commands {
                rows.push(vec![
                    c.id.as_ref().map(|i| i.value.clone()).into(),
                    c.name.clone().into(),
                    command_state(c.state).into(),
                    output::time(c.created.as_ref()),
                    c.detail.clone().into(),
                ]);
            }
            rows.print(ctx.format, "no commands for this thing");
        }
    }
    Ok(())
}

/// Follows a command to its final state: exit 0 for ACKED, 7 for FAILED, EXPIRED or a timeout.
pub(super) async fn watch(
    ctx: &Ctx,
    s: &Session,
    id: Uuid,
    timeout: Duration,
) -> Result<(), CliError> {
    let mut client = pb::control_service_client::ControlServiceClient::new(s.channel.clone());
    let spinner = output::Spinner::start(format!("waiting for command {id}"));
    let follow = async {
        let mut stream = client
            .watch_command(s.req(pb::WatchCommandRequest { id: command_id(id) }))
            .await
            .doing("watching the command")?;
        let mut last = None;
        while let Some(c) = stream
            .message()
            .await
            .map_err(|e| CliError::status("watching the command", &e))?
        {
            let state = command_state(c.state);
            spinner.set(format!("command {id}: {state}"));
            if ctx.format == Format::Json {
                output::print_object(Format::Json, &command_fields(&c));
            } else if !is_final(c.state) {
                spinner.note(&format!(
                    "{}  {state}",
                    output::time(c.updated.as_ref()).as_str().unwrap_or("")
                ));
            }
            let done = is_final(c.state);
            last = Some(c);
            if done {
                break;
            }
        }
        last.ok_or_else(|| CliError::new(Exit::Failure, "the watch ended without a state"))
    };
    let last = tokio::time::timeout(timeout, follow).await.map_err(|_| {
        CliError::new(
            Exit::CommandFailed,
            format!(
                "command {id} did not finish within {}",
                output::short(timeout)
            ),
        )
        .hint("the thing may be asleep or offline; see `sipmba things list`, or watch longer with --timeout")
    })??;
    drop(spinner);
    if ctx.format == Format::Table {
        output::print_object(Format::Table, &command_fields(&last));
    }
    match pb::CommandState::try_from(last.state) {
        Ok(pb::CommandState::Acked) => Ok(()),
        _ => Err(CliError::new(
            Exit::CommandFailed,
            format!(
                "command {id} ended {}{}",
                command_state(last.state),
                if last.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", last.detail)
                }
            ),
        )),
    }
}
