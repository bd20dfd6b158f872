//! Control: users command things. A command is durable from the moment SendCommand answers: it
//! is committed to `sipmba.commands` first, and Collect delivers it from there. Control follows
//! `sipmba.commands` and `sipmba.command-events` into its database to answer GetCommand,
//! ListCommands and WatchCommand (commands issued by processing rules included).

pub mod entity;
mod grpc;
pub mod migration;
pub mod settings;
pub mod store;

pub use migration::migrate;

pub use settings::Settings;

use std::{collections::HashMap, sync::Arc, time::Duration};

use entity::commands;
use prost::Message;
use sipmba_auth::{Access, Kind, Principal, Verifier, scopes};
use sipmba_proto::v1 as pb;
use sipmba_queue::{Queue, QueueError, producer::Producer, topics};
use sipmba_runtime::objects::{Decision, ObjectsClient};
use sipmba_runtime::{
    ServiceError, ServiceResult, Shutdown,
    ids::{Page, now_ms, optional_id, required_id, timestamp_from_ms, timestamp_to_ms},
    ratelimit::RateLimiter,
};
use store::{Change, CommandRow, Store};
use tokio::sync::{broadcast, mpsc};
use tonic::Status;
use uuid::Uuid;

/// Longest command name.
pub const MAX_NAME: usize = 64;
/// Largest payload.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;
/// Rows a ListCommands call examines before it returns a short page (with a token to go on).
const LIST_SCAN: u64 = 5_000;
/// Namespace of the command ids derived from idempotency keys.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a4e_8b0d_4c3a_9e57_21d8_c0a4_5b19);

/// The rows Control prunes: a command accepted more than `retention` (the command topic's) ago,
/// and its status. Its record has left the log by then, and its time to live — never longer than
/// the retention — is over, so it is in a final state.
pub fn prune_rules(retention: Duration) -> Vec<sipmba_runtime::prune::Rule> {
    use sipmba_runtime::prune::Rule;
    let keep = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    vec![
        Rule::new("control_statuses", "command_id", move |now| {
            format!(
                "command_id IN (SELECT id FROM control_commands WHERE created_ms < {})",
                now.saturating_sub(keep)
            )
        }),
        Rule::older_than("control_commands", "id", "created_ms", retention),
    ]
}

/// What each Control method needs.
pub fn access_policy() -> Vec<(&'static str, Access)> {
    vec![
        (
            "/sipmba.v1.ControlService/SendCommand",
            Access::Scope(scopes::COMMANDS_WRITE),
        ),
        (
            "/sipmba.v1.ControlService/GetCommand",
            Access::Authenticated,
        ),
        (
            "/sipmba.v1.ControlService/ListCommands",
            Access::Authenticated,
        ),
        (
            "/sipmba.v1.ControlService/WatchCommand",
            Access::Authenticated,
        ),
    ]
}

struct Inner {
    store: Store,
    commands: Producer,
    objects: ObjectsClient,
    verifier: Verifier,
    limits: Settings,
    rate: RateLimiter,
    /// Ids of commands whose row changed, for WatchCommand.
    changes: broadcast::Sender<Uuid>,
    shutdown: Shutdown,
}

/// The Control service. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

/// The issuer of a command, as stored.
fn issuer_of(principal: &Principal) -> (&'static str, String) {
    match principal.kind {
        Kind::Service => ("service", principal.subject.to_string()),
        _ => ("user", principal.subject.to_string()),
    }
}

fn to_pb(row: &CommandRow, now: i64) -> pb::Command {
    let c = &row.command;
    let issuer = match c.issuer_kind.as_str() {
        "rule" => pb::command_issuer::Issuer::Rule(pb::RuleId {
            value: c.issuer.clone(),
        }),
        "service" => pb::command_issuer::Issuer::Service(c.issuer.clone()),
        _ => pb::command_issuer::Issuer::User(pb::UserId {
            value: c.issuer.clone(),
        }),
    };
    let (state, updated, detail) = row.state_at(now);
    pb::Command {
        id: Some(pb::CommandId {
            value: c.id.to_string(),
        }),
        thing: Some(pb::ThingId {
            value: c.thing_id.to_string(),
        }),
        issuer: Some(pb::CommandIssuer {
            issuer: Some(issuer),
        }),
        name: c.name.clone(),
        payload: c.payload.clone(),
        created: Some(timestamp_from_ms(c.created_ms)),
        expires: Some(timestamp_from_ms(c.expires_ms)),
        state: state as i32,
        updated: Some(timestamp_from_ms(updated)),
        detail: detail.to_owned(),
    }
}

/// Decodes a record of `sipmba.commands` into a row.
pub fn decode_command(value: &[u8]) -> Result<commands::Model, String> {
    let record = pb::CommandRecord::decode(value).map_err(|e| e.to_string())?;
    let id = required_id("id", record.id.as_ref()).map_err(|e| e.to_string())?;
    let thing = required_id("thing", record.thing.as_ref()).map_err(|e| e.to_string())?;
    let (issuer_kind, issuer) = match record.issuer.and_then(|i| i.issuer) {
        Some(pb::command_issuer::Issuer::User(u)) => ("user", u.value),
        Some(pb::command_issuer::Issuer::Rule(r)) => ("rule", r.value),
        Some(pb::command_issuer::Issuer::Service(s)) => ("service", s),
        None => ("service", String::new()),
    };
    let ms = |field: &str, t: Option<prost_types::Timestamp>| {
        t.ok_or_else(|| format!("`{field}` is missing"))
            .and_then(|t| timestamp_to_ms(field, &t).map_err(|e| e.to_string()))
    };
    Ok(commands::Model {
        id,
        thing_id: thing,
        issuer_kind: issuer_kind.to_owned(),
        issuer,
        name: record.name,
        payload: record.payload,
        created_ms: ms("created", record.created)?,
        expires_ms: ms("expires", record.expires)?,
    })
}

fn decode_event(value: &[u8]) -> Result<Change, String> {
    let event = pb::CommandEvent::decode(value).map_err(|e| e.to_string())?;
    let command = required_id("command", event.command.as_ref()).map_err(|e| e.to_string())?;
    let time_ms = event
        .time
        .as_ref()
        .and_then(|t| timestamp_to_ms("time", t).ok())
        .unwrap_or_else(now_ms);
    Ok(Change::Event {
        command,
        state: event.state,
        time_ms,
        detail: event.detail,
    })
}

impl Control {
    /// Control over `store` (migrated), `queue` (creating the command topics with `partitions`
    /// partitions when missing), and `objects` for access decisions. Starts following the
    /// command topics into the store until `shutdown`.
    pub async fn start(
        store: Store,
        queue: &Queue,
        partitions: i32,
        objects: ObjectsClient,
        verifier: Verifier,
        limits: Settings,
        shutdown: Shutdown,
    ) -> Result<Self, QueueError> {
        queue
            .ensure_topic(topics::COMMAND_EVENTS, partitions)
            .await?;
        let commands = Producer::new(
            queue,
            topics::COMMANDS,
            partitions,
            sipmba_queue::producer::BatchLimits {
                linger: Duration::from_millis(1),
                ..Default::default()
            },
        )
        .await?;
        let (changes, _) = broadcast::channel(4096);
        let control = Self {
            inner: Arc::new(Inner {
                store,
                commands,
                objects,
                verifier,
                rate: RateLimiter::new(limits.commands_per_second, limits.burst_commands),
                limits,
                changes,
                shutdown: shutdown.clone(),
            }),
        };
        for topic in [topics::COMMANDS, topics::COMMAND_EVENTS] {
            for partition in 0..queue.partition_count(topic).await? {
                let client = queue.partition(topic, partition).await?;
                let lag = queue.lag("control", topic, partition).await;
                tokio::spawn(control.clone().follow(topic, client, lag, shutdown.clone()));
            }
        }
        Ok(control)
    }

    /// Registers the service, its access rules and its database with `server`.
    pub fn register(&self, server: &mut sipmba_runtime::Server) {
        server
            .add_service(pb::control_service_server::ControlServiceServer::new(
                self.clone(),
            ))
            .access(access_policy())
            .requires_database(self.inner.store.db().clone());
    }

    /// Follows one partition of a command topic into the store.
    async fn follow(
        self,
        topic: &'static str,
        client: sipmba_queue::PartitionClient,
        lag: sipmba_queue::lag::PartitionLag,
        stop: Shutdown,
    ) {
        let partition = client.partition();
        let offsets = self.inner.store.clone();
        sipmba_queue::follow_stored(
            client,
            sipmba_queue::IDLE_FETCH_WAIT,
            Some(lag),
            move || {
                let store = offsets.clone();
                async move { store.offset(topic, partition).await }
            },
            move |records: Arc<[(i64, Vec<u8>)]>, next| {
                let me = self.clone();
                async move {
                    let mut changes = Vec::with_capacity(records.len());
                    for (offset, value) in records.iter() {
                        let change = if topic == topics::COMMANDS {
                            decode_command(value).map(Change::Command)
                        } else {
                            decode_event(value)
                        };
                        match change {
                            Ok(c) => changes.push(c),
                            Err(reason) => {
                                tracing::warn!(topic, partition, offset, %reason, "skipping an undecodable record");
                            }
                        }
                    }
                    me.inner.store.apply(topic, partition, &changes, next).await?;
                    for change in &changes {
                        let _ = me.inner.changes.send(change.command_id());
                    }
                    Ok::<_, ServiceError>(())
                }
            },
            || {},
            stop.wait(),
        )
        .await;
    }

    /// Whether `principal` may see (and, with `command`, command) `thing`.
    async fn authorize(
        &self,
        principal: &Principal,
        thing: Uuid,
        command: bool,
    ) -> ServiceResult<()> {
        let not_found = || ServiceError::not_found(format!("thing {thing} not found"));
        match principal.kind {
            Kind::Service => {
                if command {
                    match self.inner.objects.thing(thing).await? {
                        None => return Err(not_found()),
                        Some(effective) if effective.active() => {}
                        Some(_) => {
                            return Err(ServiceError::FailedPrecondition(format!(
                                "thing {thing} is disabled (itself or through its owner); enable it first"
                            )));
                        }
                    }
                } else if !principal.has_scope(scopes::COMMANDS_READ)
                    && !principal.has_scope(scopes::COMMANDS_WRITE)
                {
                    return Err(ServiceError::PermissionDenied(
                        "reading commands needs scope commands:read".into(),
                    ));
                }
                Ok(())
            }
            Kind::Thing => Err(ServiceError::PermissionDenied(
                "things do not send or read commands here; they receive theirs from Collect".into(),
            )),
            Kind::User => {
                if !command
                    && !principal.has_scope(scopes::COMMANDS_READ)
                    && !principal.has_scope(scopes::COMMANDS_WRITE)
                {
                    return Err(ServiceError::PermissionDenied(
                        "reading commands needs scope commands:read".into(),
                    ));
                }
                self.authorize_user(principal.subject, "your", thing, command)
                    .await
            }
        }
    }

    /// Whether `user` may see (and, with `command`, command) `thing`; `whose` names the user in
    /// messages ("your", "the rule owner's").
    async fn authorize_user(
        &self,
        user: Uuid,
        whose: &str,
        thing: Uuid,
        command: bool,
    ) -> ServiceResult<()> {
        let decision = self
            .inner
            .objects
            .check(user, thing, pb::ChannelPermission::SendCommands)
            .await?;
        match decision {
            Decision::Allowed => Ok(()),
            Decision::NotReachable => {
                Err(ServiceError::not_found(format!("thing {thing} not found")))
            }
            Decision::PermissionMissing => Err(ServiceError::PermissionDenied(format!(
                "{whose} grant on thing {thing} does not include CHANNEL_PERMISSION_SEND_COMMANDS"
            ))),
            Decision::ThingInactive if command => Err(ServiceError::FailedPrecondition(format!(
                "thing {thing} is disabled (itself or through its owner); enable it first"
            ))),
            // Its commands stay visible.
            Decision::ThingInactive => Ok(()),
        }
    }

    async fn send(
        &self,
        principal: &Principal,
        r: &pb::SendCommandRequest,
    ) -> ServiceResult<pb::Command> {
        let thing = required_id("thing", r.thing.as_ref())?;
        if !sipmba_runtime::ids::valid_name(&r.name) {
            return Err(ServiceError::invalid(format!(
                "`name` must be 1 to {MAX_NAME} characters of [A-Za-z0-9._-]"
            )));
        }
        if r.payload.len() > MAX_PAYLOAD {
            return Err(ServiceError::invalid(format!(
                "`payload` is {} bytes; at most {MAX_PAYLOAD}",
                r.payload.len()
            )));
        }
        if r.idempotency_key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(ServiceError::invalid(format!(
                "`idempotency_key` is {} characters; at most {MAX_IDEMPOTENCY_KEY}",
                r.idempotency_key.len()
            )));
        }
        let limits = &self.inner.limits;
        let ttl = match &r.ttl {
            None => limits.default_ttl(),
            Some(d) => {
                let ttl = (d.nanos >= 0 && d.seconds >= 0)
                    .then(|| Duration::new(d.seconds.unsigned_abs(), d.nanos.unsigned_abs()));
                match ttl {
                    Some(ttl) if ttl >= Duration::from_secs(1) && ttl <= limits.max_ttl() => ttl,
                    _ => {
                        return Err(ServiceError::invalid(format!(
                            "`ttl` must be between 1 s and {} s",
                            limits.max_ttl_secs
                        )));
                    }
                }
            }
        };
        let (issuer_kind, issuer, rate_key) = match &r.on_behalf_of {
            None => {
                self.authorize(principal, thing, true).await?;
                let (kind, issuer) = issuer_of(principal);
                (kind, issuer, principal.subject)
            }
            Some(delegation) => {
                if principal.kind != Kind::Service {
                    return Err(ServiceError::PermissionDenied(
                        "`on_behalf_of` is for service principals (Processing's rules)".into(),
                    ));
                }
                let rule = required_id("on_behalf_of.rule", delegation.rule.as_ref())?;
                let owner = required_id("on_behalf_of.owner", delegation.owner.as_ref())?;
                self.authorize_user(owner, "the rule owner's", thing, true)
                    .await?;
                ("rule", rule.to_string(), rule)
            }
        };
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let id = if r.idempotency_key.is_empty() {
            Uuid::new_v4()
        } else {
            let id = Uuid::new_v5(
                &IDEMPOTENCY_NAMESPACE,
                format!("{issuer_kind}:{issuer}:{}", r.idempotency_key).as_bytes(),
            );
            if let Some(existing) = self.inner.store.get(id).await? {
                let c = &existing.command;
                if c.thing_id == thing
                    && c.name == r.name
                    && c.payload == r.payload
                    && c.expires_ms - c.created_ms == ttl_ms
                {
                    return Ok(to_pb(&existing, now_ms()));
                }
                return Err(ServiceError::AlreadyExists(
                    "`idempotency_key` was used for a different command; choose a new key".into(),
                ));
            }
            id
        };
        if let Err(wait) = self.inner.rate.take(rate_key, 1) {
            return Err(ServiceError::ResourceExhausted {
                message: format!(
                    "over the rate of {} commands per second for one issuer; retry in {} ms",
                    limits.commands_per_second,
                    wait.as_millis()
                ),
                retry_after: wait,
            });
        }
        let now = now_ms();
        let pending = self.inner.store.pending(thing, now).await?;
        if pending >= limits.max_pending_per_thing {
            return Err(ServiceError::ResourceExhausted {
                message: format!(
                    "thing {thing} already has {pending} commands waiting (at most {}); retry once it has taken some",
                    limits.max_pending_per_thing
                ),
                retry_after: Duration::from_secs(60),
            });
        }
        let row = commands::Model {
            id,
            thing_id: thing,
            issuer_kind: issuer_kind.to_owned(),
            issuer: issuer.clone(),
            name: r.name.clone(),
            payload: r.payload.clone(),
            created_ms: now,
            expires_ms: now.saturating_add(ttl_ms),
        };
        let issuer_pb = match issuer_kind {
            "rule" => pb::command_issuer::Issuer::Rule(pb::RuleId { value: issuer }),
            "service" => pb::command_issuer::Issuer::Service(issuer),
            _ => pb::command_issuer::Issuer::User(pb::UserId { value: issuer }),
        };
        let record = pb::CommandRecord {
            id: Some(pb::CommandId {
                value: id.to_string(),
            }),
            thing: Some(pb::ThingId {
                value: thing.to_string(),
            }),
            issuer: Some(pb::CommandIssuer {
                issuer: Some(issuer_pb),
            }),
            name: row.name.clone(),
            payload: row.payload.clone(),
            created: Some(timestamp_from_ms(row.created_ms)),
            expires: Some(timestamp_from_ms(row.expires_ms)),
        };
        let commit = self
            .inner
            .commands
            .send(thing.to_string().as_bytes(), record.encode_to_vec())
            .await;
        match commit.await {
            Ok(Ok(_)) => {}
            _ => {
                return Err(ServiceError::Unavailable(
                    "the command log cannot be reached; nothing was queued. Retry with the same idempotency_key".into(),
                ));
            }
        }
        // Durable now; the follower would record it too, this makes it visible at once.
        self.inner.store.insert_command(&row).await?;
        let _ = self.inner.changes.send(id);
        tracing::info!(command = %id, %thing, issuer = %principal.actor(), name = %row.name, "command queued");
        Ok(to_pb(
            &CommandRow {
                command: row,
                status: None,
            },
            now,
        ))
    }

    async fn get(&self, principal: &Principal, id: Uuid) -> ServiceResult<CommandRow> {
        let not_found = || ServiceError::not_found(format!("command {id} not found"));
        let row = self.inner.store.get(id).await?.ok_or_else(not_found)?;
        match self.authorize(principal, row.command.thing_id, false).await {
            Ok(()) => Ok(row),
            Err(ServiceError::NotFound(_)) => Err(not_found()),
            Err(e) => Err(e),
        }
    }

    async fn list(
        &self,
        principal: &Principal,
        r: &pb::ListCommandsRequest,
    ) -> ServiceResult<pb::ListCommandsResponse> {
        let thing = optional_id("thing", r.thing.as_ref())?;
        let mut states = Vec::new();
        for s in &r.states {
            match pb::CommandState::try_from(*s) {
                Ok(pb::CommandState::Unspecified) | Err(_) => {
                    return Err(ServiceError::invalid(format!(
                        "`states` holds {s}, which is not a command state"
                    )));
                }
                Ok(state) => states.push(state),
            }
        }
        let filters = format!("thing={thing:?};states={states:?}");
        let page = Page::decode(r.page.as_ref(), &filters)?;
        let mut after = match page.after {
            None => None,
            Some(id) => {
                let row = self.inner.store.get(id).await?.ok_or_else(|| {
                    ServiceError::invalid(
                        "`page.page_token` points at a command that no longer exists; start again",
                    )
                })?;
                Some((row.command.created_ms, id))
            }
        };
        if let Some(thing) = thing {
            self.authorize(principal, thing, false).await?;
        } else if principal.kind == Kind::Thing {
            return Err(ServiceError::PermissionDenied(
                "things do not read commands here; they receive theirs from Collect".into(),
            ));
        }
        let now = now_ms();
        let mut reachable: HashMap<Uuid, bool> = HashMap::new();
        let mut out: Vec<CommandRow> = Vec::new();
        let mut scanned = 0;
        let wanted = usize::try_from(page.fetch_limit()).unwrap_or(usize::MAX);
        let mut last_scanned = None;
        while out.len() < wanted && scanned < LIST_SCAN {
            let rows = self.inner.store.list(thing, after, 200).await?;
            if rows.is_empty() {
                last_scanned = None;
                break;
            }
            for row in rows {
                scanned += 1;
                after = Some((row.command.created_ms, row.command.id));
                last_scanned = Some(row.command.id);
                let thing_id = row.command.thing_id;
                let visible = match (thing, reachable.get(&thing_id)) {
                    (Some(_), _) => true,
                    (None, Some(v)) => *v,
                    (None, None) => {
                        let v = match self.authorize(principal, thing_id, false).await {
                            Ok(()) => true,
                            Err(ServiceError::NotFound(_) | ServiceError::PermissionDenied(_)) => {
                                false
                            }
                            Err(e) => return Err(e),
                        };
                        reachable.insert(thing_id, v);
                        v
                    }
                };
                if visible && (states.is_empty() || states.contains(&row.state_at(now).0)) {
                    out.push(row);
                    if out.len() >= wanted {
                        break;
                    }
                }
            }
        }
        let mut next_page_token = page.finish(&mut out, |row| row.command.id);
        if next_page_token.is_empty()
            && scanned >= LIST_SCAN
            && let Some(last) = last_scanned
        {
            // The scan stopped before the end: a short page, and a token to go on from there.
            next_page_token = page.token_after(last);
        }
        Ok(pb::ListCommandsResponse {
            commands: out.iter().map(|row| to_pb(row, now)).collect(),
            next_page_token,
        })
    }

    async fn watch(
        self,
        principal: Principal,
        id: Uuid,
        tx: mpsc::Sender<Result<pb::Command, Status>>,
    ) {
        let mut changes = self.inner.changes.subscribe();
        let mut last: Option<pb::Command> = None;
        let mut recheck = tokio::time::interval(Duration::from_secs(1));
        let mut checks = 0u32;
        loop {
            let row = match self.get(&principal, id).await {
                Ok(row) => row,
                Err(e) => {
                    let _ = tx.send(Err(Status::from(e))).await;
                    return;
                }
            };
            let now = now_ms();
            let current = to_pb(&row, now);
            if last.as_ref() != Some(&current) {
                if tx.send(Ok(current.clone())).await.is_err() {
                    return;
                }
                let terminal = store::is_terminal(current.state);
                last = Some(current);
                if terminal {
                    return;
                }
            }
            let until_expiry =
                Duration::from_millis(u64::try_from(row.command.expires_ms - now).unwrap_or(0));
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(changed) if changed != id => continue,
                    // Ours, or missed some: read again.
                    _ => {}
                },
                () = tokio::time::sleep(until_expiry) => {}
                _ = recheck.tick() => {
                    checks += 1;
                    if let Err(status) = self.token_still_valid(&principal) {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    // Access is asked of Objects again every 30 s (reading re-checks it).
                    if !checks.is_multiple_of(30) {
                        continue;
                    }
                }
                () = tx.closed() => return,
                () = self.inner.shutdown.clone().wait() => return,
            }
        }
    }

    fn token_still_valid(&self, principal: &Principal) -> Result<(), Status> {
        self.inner
            .verifier
            .still_valid(principal)
            .map_err(|lapsed| lapsed.status("while watching"))
    }
}
