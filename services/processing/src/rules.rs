//! Threshold rules (their tables are in [`crate::entity`]): their evaluation inside the
//! consumer's transaction (so that a rule's state per thing moves with the readings and the
//! partition offset: a restart neither repeats a firing nor loses a hold in progress), and the
//! dispatcher that sends each firing's command through Control, as the rule's owner, with the
//! firing's id as idempotency key.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
    time::Duration,
};

use prost::Message;
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
    sea_query::{Expr, OnConflict},
};
use sipmba_auth::peer_tls::PeerCa;
use sipmba_proto::v1 as pb;
use sipmba_runtime::{
    ServiceError, ServiceResult, Shutdown,
    ids::now_ms,
    objects::{ObjectsClient, ServiceToken},
};
use tokio::sync::Notify;
use tonic::{Code, transport::Channel};
use uuid::Uuid;

use crate::{
    Ownership,
    entity::{definitions, firings, states},
    record::Incoming,
};

/// Firing states.
pub const PENDING: &str = "pending";
/// The command was queued.
pub const SENT: &str = "sent";
/// Control refused the command; `detail` says why.
pub const REFUSED: &str = "refused";

/// How a rule compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comparison(pub pb::Comparison);

impl Comparison {
    /// `value <op> threshold`.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self.0 {
            pb::Comparison::Gt => value > threshold,
            pb::Comparison::Ge => value >= threshold,
            pb::Comparison::Lt => value < threshold,
            pb::Comparison::Le => value <= threshold,
            pb::Comparison::Eq => value == threshold,
            pb::Comparison::Ne => value != threshold,
            pb::Comparison::Unspecified => false,
        }
    }
}

/// The things a rule watches, resolved.
#[derive(Debug, Clone)]
enum Targets {
    Thing(Uuid),
    Set(HashSet<Uuid>),
}

/// A rule ready for evaluation.
#[derive(Debug, Clone)]
struct Compiled {
    id: Uuid,
    owner: Uuid,
    generation: i64,
    comparison: Comparison,
    threshold: f64,
    hold_ms: i64,
    cooldown_ms: i64,
    action: (String, Vec<u8>, Option<i64>),
    targets: Targets,
}

impl Compiled {
    fn watches(&self, thing: Uuid) -> bool {
        match &self.targets {
            Targets::Thing(t) => *t == thing,
            Targets::Set(set) => set.contains(&thing),
        }
    }
}

/// The enabled rules by metric name.
#[derive(Debug, Default)]
pub struct Snapshot {
    by_metric: HashMap<String, Vec<Compiled>>,
}

impl Snapshot {
    /// True when no rule is enabled.
    pub fn is_empty(&self) -> bool {
        self.by_metric.is_empty()
    }
}

/// The selector stored with a rule.
pub fn encode_selector(selector: &pb::rule::Selector) -> Vec<u8> {
    pb::Rule {
        selector: Some(selector.clone()),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The selector of a stored rule.
pub fn decode_selector(bytes: &[u8]) -> Option<pb::rule::Selector> {
    pb::Rule::decode(bytes).ok().and_then(|r| r.selector)
}

/// The value a rule compares: numbers as themselves, flags as 0 or 1; text never matches.
fn number(metric: &pb::Metric) -> Option<f64> {
    match metric.value {
        Some(pb::metric::Value::Number(n)) => Some(n),
        Some(pb::metric::Value::Flag(f)) => Some(if f { 1.0 } else { 0.0 }),
        _ => None,
    }
}

/// Evaluates `snapshot` against a batch about to be stored from `partition`, inside `txn`:
/// updates the rules' per-thing states and records their firings. Returns how many fired.
pub async fn evaluate(
    txn: &impl ConnectionTrait,
    snapshot: &Snapshot,
    partition: i32,
    batch: &[Incoming],
) -> ServiceResult<usize> {
    if snapshot.is_empty() {
        return Ok(0);
    }
    // (rule, reading, value) in log order.
    let mut touched: Vec<(&Compiled, &Incoming, Option<f64>)> = Vec::new();
    for incoming in batch {
        for metric in &incoming.reading.metrics {
            if let Some(rules) = snapshot.by_metric.get(&metric.name) {
                for rule in rules.iter().filter(|r| r.watches(incoming.thing)) {
                    touched.push((rule, incoming, number(metric)));
                }
            }
        }
    }
    if touched.is_empty() {
        return Ok(0);
    }
    let rule_ids: HashSet<Uuid> = touched.iter().map(|(r, _, _)| r.id).collect();
    let thing_ids: HashSet<Uuid> = touched.iter().map(|(_, i, _)| i.thing).collect();
    let mut state: HashMap<(Uuid, Uuid), states::Model> = states::Entity::find()
        .filter(states::Column::RuleId.is_in(rule_ids))
        .filter(states::Column::ThingId.is_in(thing_ids))
        .all(txn)
        .await?
        .into_iter()
        .map(|s| ((s.rule_id, s.thing_id), s))
        .collect();
    let mut dirty: HashSet<(Uuid, Uuid)> = HashSet::new();
    let mut fired = Vec::new();
    for (rule, incoming, value) in touched {
        let seq: i64 = incoming.reading.seq.try_into().unwrap_or(i64::MAX);
        let key = (rule.id, incoming.thing);
        let s = state.entry(key).or_insert_with(|| states::Model {
            rule_id: rule.id,
            thing_id: incoming.thing,
            generation: rule.generation,
            last_seq: 0,
            since_ms: None,
            fired: false,
            last_fired_ms: None,
        });
        if seq <= s.last_seq {
            continue;
        }
        dirty.insert(key);
        s.last_seq = seq;
        if s.generation != rule.generation {
            s.generation = rule.generation;
            s.since_ms = None;
            s.fired = false;
        }
        let device_ms = incoming.device_ms();
        let Some(value) = value.filter(|v| rule.comparison.holds(*v, rule.threshold)) else {
            s.since_ms = None;
            s.fired = false;
            continue;
        };
        let since = *s.since_ms.get_or_insert(device_ms);
        let held = device_ms.saturating_sub(since) >= rule.hold_ms;
        let cooled = s
            .last_fired_ms
            .is_none_or(|last| device_ms.saturating_sub(last) >= rule.cooldown_ms);
        if s.fired || !held || !cooled {
            continue;
        }
        s.fired = true;
        s.last_fired_ms = Some(device_ms);
        let (name, payload, ttl) = rule.action.clone();
        fired.push(firings::ActiveModel {
            id: Set(Uuid::new_v4()),
            rule_id: Set(rule.id),
            owner_id: Set(rule.owner),
            thing_id: Set(incoming.thing),
            partition: Set(partition),
            seq: Set(seq),
            value: Set(value),
            crossed_ms: Set(since),
            fired_ms: Set(now_ms()),
            action_name: Set(name),
            action_payload: Set(payload),
            action_ttl_ms: Set(ttl),
            status: Set(PENDING.to_owned()),
            command_id: Set(None),
            detail: Set(String::new()),
        });
    }
    for key in dirty {
        let Some(s) = state.remove(&key) else {
            continue;
        };
        states::Entity::insert(states::ActiveModel {
            rule_id: Set(s.rule_id),
            thing_id: Set(s.thing_id),
            generation: Set(s.generation),
            last_seq: Set(s.last_seq),
            since_ms: Set(s.since_ms),
            fired: Set(s.fired),
            last_fired_ms: Set(s.last_fired_ms),
        })
        .on_conflict(
            OnConflict::columns([states::Column::RuleId, states::Column::ThingId])
                .update_columns([
                    states::Column::Generation,
                    states::Column::LastSeq,
                    states::Column::SinceMs,
                    states::Column::Fired,
                    states::Column::LastFiredMs,
                ])
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    }
    let count = fired.len();
    if !fired.is_empty() {
        firings::Entity::insert_many(fired)
            .exec_without_returning(txn)
            .await?;
    }
    Ok(count)
}

/// Where the dispatcher sends commands: Control, with Processing's own token.
#[derive(Debug, Clone)]
pub struct ControlClient {
    channel: Channel,
    token: ServiceToken,
}

impl ControlClient {
    /// Control at `url` (connects lazily; an `https://` one verified against `ca`).
    pub fn new(url: &str, token: ServiceToken, ca: &PeerCa) -> ServiceResult<Self> {
        let channel = ca
            .channel(url, Duration::from_secs(10))
            .map_err(|e| ServiceError::Internal(format!("control: {e}")))?;
        Ok(Self { channel, token })
    }
}

struct Inner {
    db: DatabaseConnection,
    objects: ObjectsClient,
    snapshot: RwLock<Arc<Snapshot>>,
    /// A rule changed: resolve again now.
    changed: Notify,
    /// A firing was recorded: dispatch now.
    fired: Notify,
    refresh: Duration,
}

/// The rules of one Processing replica: the current snapshot for evaluation, its refresher, and
/// the dispatcher of firings. Cheap to clone.
#[derive(Clone)]
pub struct Rules {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules").finish_non_exhaustive()
    }
}

impl Rules {
    /// Loads the rules (waiting until the database answers, so that no reading is evaluated
    /// without them), then keeps them fresh every `refresh` and on change, and sends the firings
    /// of the partitions `ownership` assigns through `control`, until `shutdown`.
    pub async fn start(
        db: DatabaseConnection,
        objects: ObjectsClient,
        control: ControlClient,
        ownership: Ownership,
        refresh: Duration,
        shutdown: Shutdown,
    ) -> Option<Self> {
        let rules = Self {
            inner: Arc::new(Inner {
                db,
                objects,
                snapshot: RwLock::new(Arc::new(Snapshot::default())),
                changed: Notify::new(),
                fired: Notify::new(),
                refresh,
            }),
        };
        let first = {
            let rules = rules.clone();
            move || {
                let rules = rules.clone();
                async move { rules.reload().await }
            }
        };
        sipmba_runtime::retry::until_ok("cannot load the processing rules yet", &shutdown, first)
            .await?;
        tokio::spawn(rules.clone().refresher(shutdown.clone()));
        tokio::spawn(rules.clone().dispatcher(control, ownership, shutdown));
        Some(rules)
    }

    /// The rules to evaluate now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner
            .snapshot
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// The database the rules live in.
    pub fn db(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    /// The Objects client rules are authorized with.
    pub fn objects(&self) -> &ObjectsClient {
        &self.inner.objects
    }

    /// Says that rules changed: the snapshot is rebuilt before this returns, so that the next
    /// batch stored is evaluated with the change (other replicas see it at their next refresh).
    pub async fn changed(&self) {
        if let Err(e) = self.reload().await {
            tracing::warn!(error = %e, "cannot reload the processing rules now; retrying soon");
            self.inner.changed.notify_one();
        }
    }

    /// Says that firings were recorded: the dispatcher runs now.
    pub fn fired(&self) {
        self.inner.fired.notify_one();
    }

    /// Rebuilds the snapshot from the database; channel and label selectors are resolved at
    /// Objects (a rule whose selection cannot be resolved keeps its previous targets).
    async fn reload(&self) -> ServiceResult<()> {
        let rows = definitions::Entity::find()
            .filter(definitions::Column::Enabled.eq(true))
            .all(&self.inner.db)
            .await?;
        let previous = self.snapshot();
        let mut old_targets: HashMap<Uuid, &Targets> = HashMap::new();
        for rules in previous.by_metric.values() {
            for r in rules {
                old_targets.insert(r.id, &r.targets);
            }
        }
        let mut by_metric: HashMap<String, Vec<Compiled>> = HashMap::new();
        for row in rows {
            use pb::list_accessible_things_request::Selection;
            let selection = match decode_selector(&row.selector) {
                Some(pb::rule::Selector::Thing(t)) => match Uuid::parse_str(&t.value) {
                    Ok(t) => Err(Targets::Thing(t)),
                    Err(_) => continue,
                },
                Some(pb::rule::Selector::Channel(c)) => Ok(Selection::Channel(c)),
                Some(pb::rule::Selector::Labels(l)) => Ok(Selection::Labels(l)),
                None => continue,
            };
            let targets = match selection {
                Err(targets) => targets,
                Ok(selection) => match self
                    .inner
                    .objects
                    .accessible_things(
                        row.owner_id,
                        selection,
                        &[
                            pb::ChannelPermission::ReadTelemetry,
                            pb::ChannelPermission::SendCommands,
                        ],
                    )
                    .await
                {
                    Ok(Some(things)) => Targets::Set(things.into_iter().collect()),
                    Ok(None) => Targets::Set(HashSet::new()),
                    Err(e) => {
                        tracing::warn!(rule = %row.id, error = %e, "cannot resolve a rule's selection now; keeping the last one");
                        old_targets
                            .get(&row.id)
                            .map_or_else(|| Targets::Set(HashSet::new()), |t| (*t).clone())
                    }
                },
            };
            let comparison =
                pb::Comparison::try_from(row.comparison).unwrap_or(pb::Comparison::Unspecified);
            by_metric
                .entry(row.metric.clone())
                .or_default()
                .push(Compiled {
                    id: row.id,
                    owner: row.owner_id,
                    generation: row.generation,
                    comparison: Comparison(comparison),
                    threshold: row.threshold,
                    hold_ms: row.hold_ms,
                    cooldown_ms: row.cooldown_ms,
                    action: (row.action_name, row.action_payload, row.action_ttl_ms),
                    targets,
                });
        }
        if let Ok(mut s) = self.inner.snapshot.write() {
            *s = Arc::new(Snapshot { by_metric });
        }
        Ok(())
    }

    async fn refresher(self, shutdown: Shutdown) {
        loop {
            tokio::select! {
                () = self.inner.changed.notified() => {}
                () = tokio::time::sleep(self.inner.refresh) => {}
                () = shutdown.clone().wait() => return,
            }
            if let Err(e) = self.reload().await {
                tracing::warn!(error = %e, "cannot reload the processing rules; keeping the current ones");
            }
        }
    }

    /// Sends the pending firings of the owned partitions, oldest first; retries what Control
    /// could not take (with backoff), records what it refused.
    async fn dispatcher(self, control: ControlClient, ownership: Ownership, shutdown: Shutdown) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let wake = self.inner.fired.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let retry = match self.dispatch_pending(&control, ownership).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis(), "cannot send a rule's command yet");
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    Some(wait)
                }
            };
            let idle = retry.unwrap_or(Duration::from_secs(5));
            tokio::select! {
                () = &mut wake, if retry.is_none() => {}
                () = tokio::time::sleep(idle) => {}
                () = shutdown.clone().wait() => return,
            }
        }
    }

    async fn dispatch_pending(
        &self,
        control: &ControlClient,
        ownership: Ownership,
    ) -> ServiceResult<()> {
        loop {
            // The firings of the partitions this replica owns.
            let mine = firings::Entity::find()
                .filter(firings::Column::Status.eq(PENDING))
                .filter(Expr::cust(format!(
                    "\"partition\" % {} = {}",
                    Ord::max(ownership.replicas, 1),
                    ownership.replica
                )))
                .order_by_asc(firings::Column::FiredMs)
                .limit(100)
                .all(&self.inner.db)
                .await?;
            if mine.is_empty() {
                return Ok(());
            }
            for firing in mine {
                let (status, command, detail) = match self.send(control, &firing).await? {
                    Ok(command) => (SENT, Some(command), String::new()),
                    Err(detail) => (REFUSED, None, detail),
                };
                firings::Entity::update_many()
                    .col_expr(firings::Column::Status, Expr::value(status))
                    .col_expr(firings::Column::CommandId, Expr::value(command))
                    .col_expr(firings::Column::Detail, Expr::value(detail))
                    .filter(firings::Column::Id.eq(firing.id))
                    .exec(&self.inner.db)
                    .await?;
            }
        }
    }

    /// Sends one firing's command: the command id, or why Control refused it for good; an
    /// error when it should be tried again.
    async fn send(
        &self,
        control: &ControlClient,
        firing: &firings::Model,
    ) -> ServiceResult<Result<Uuid, String>> {
        let request = control
            .token
            .request(pb::SendCommandRequest {
                thing: Some(pb::ThingId {
                    value: firing.thing_id.to_string(),
                }),
                name: firing.action_name.clone(),
                payload: firing.action_payload.clone(),
                ttl: firing.action_ttl_ms.map(|ms| prost_types::Duration {
                    seconds: ms / 1000,
                    nanos: ((ms % 1000) * 1_000_000).try_into().unwrap_or(0),
                }),
                idempotency_key: format!("firing:{}", firing.id),
                on_behalf_of: Some(pb::RuleDelegation {
                    rule: Some(pb::RuleId {
                        value: firing.rule_id.to_string(),
                    }),
                    owner: Some(pb::UserId {
                        value: firing.owner_id.to_string(),
                    }),
                }),
            })
            .await?;
        match pb::control_service_client::ControlServiceClient::new(control.channel.clone())
            .send_command(request)
            .await
        {
            Ok(command) => {
                let id = command
                    .into_inner()
                    .id
                    .and_then(|id| Uuid::parse_str(&id.value).ok())
                    .ok_or_else(|| {
                        ServiceError::Internal("control answered without an id".into())
                    })?;
                tracing::info!(rule = %firing.rule_id, thing = %firing.thing_id, command = %id, "rule fired: command queued");
                Ok(Ok(id))
            }
            Err(s) => match s.code() {
                Code::NotFound
                | Code::PermissionDenied
                | Code::FailedPrecondition
                | Code::InvalidArgument
                | Code::AlreadyExists => {
                    tracing::info!(rule = %firing.rule_id, thing = %firing.thing_id, code = ?s.code(), "rule fired: control refused its command");
                    Ok(Err(format!("control refused the command: {}", s.message())))
                }
                _ => Err(ServiceError::Unavailable(format!(
                    "control did not take the command: {}",
                    s.message()
                ))),
            },
        }
    }
}
