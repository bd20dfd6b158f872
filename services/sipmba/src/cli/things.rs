//! `sipmba things`.

use serde_json::{Value, json};
use sipmba_proto::v1 as pb;
use uuid::Uuid;

use super::{CliError, Context, Ctx, Exit, Session, key_value, output, output::Rows};

use super::names::*;

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

pub(super) fn labels_value(
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

pub(super) fn thing_fields(
    format: output::Format,
    thing: &pb::Thing,
) -> Vec<(&'static str, Value)> {
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
pub(super) async fn thing_secret(
    s: &Session,
    id: Uuid,
    rotate: bool,
) -> Result<(String, String), CliError> {
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
pub(super) async fn presence(
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
