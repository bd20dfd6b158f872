//! The gRPC front of Processing: telemetry queries, live subscriptions and presence, each thing
//! authorized as Objects decides (subtree, or a live grant with CHANNEL_PERMISSION_READ_TELEMETRY).

use std::{
    collections::{HashMap, HashSet},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use sipmba_auth::{Access, Kind, Principal, Verifier, scopes};
use sipmba_proto::v1::{
    self as pb, presence_service_server::PresenceService,
    telemetry_service_server::TelemetryService,
};
use sipmba_runtime::{
    ServiceError, ServiceResult, Shutdown,
    ids::{Page, now_ms, required_id, timestamp_from_ms, timestamp_to_ms, valid_name},
    objects::{Decision, ObjectsClient},
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    entity::{latest, metrics},
    record::Incoming,
    store::Store,
};

/// Most things in one request.
pub const MAX_THINGS: usize = 100;
/// Most buckets one history query may span.
pub const MAX_BUCKETS: i64 = 100_000;

/// How often a channel subscription looks for things connected or disconnected since.
pub const CHANNEL_REFRESH: Duration = Duration::from_secs(10);

/// What a subscription follows.
enum Target {
    Things(Vec<Uuid>),
    /// The channel and its things as last resolved.
    Channel(pb::ChannelId, HashSet<Uuid>),
}

/// What each Processing method needs.
pub fn access_policy() -> Vec<(&'static str, Access)> {
    [
        "/sipmba.v1.TelemetryService/GetLatest",
        "/sipmba.v1.TelemetryService/QueryHistory",
        "/sipmba.v1.TelemetryService/Subscribe",
        "/sipmba.v1.PresenceService/GetPresence",
    ]
    .into_iter()
    .map(|m| (m, Access::Scope(scopes::TELEMETRY_READ)))
    .collect()
}

struct Inner {
    store: Store,
    objects: ObjectsClient,
    verifier: Verifier,
    live: broadcast::Sender<Arc<Vec<Incoming>>>,
    online_window: Duration,
    shutdown: Shutdown,
}

/// The query side of Processing. Cheap to clone.
#[derive(Clone)]
pub struct Queries {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Queries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queries").finish_non_exhaustive()
    }
}

fn things_of(ids: &[pb::ThingId]) -> ServiceResult<Vec<Uuid>> {
    if ids.is_empty() || ids.len() > MAX_THINGS {
        return Err(ServiceError::invalid(format!(
            "`things` must name 1 to {MAX_THINGS} things; it names {}",
            ids.len()
        )));
    }
    let mut out = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let thing = required_id(&format!("things[{i}]"), Some(id))?;
        if !out.contains(&thing) {
            out.push(thing);
        }
    }
    Ok(out)
}

fn metric_names(names: &[String]) -> ServiceResult<Vec<String>> {
    for name in names {
        if !valid_name(name) {
            return Err(ServiceError::invalid(format!(
                "metric name {name:?} is not 1 to 64 characters of [A-Za-z0-9._-]"
            )));
        }
    }
    Ok(names.to_vec())
}

fn metric_of(
    number: Option<f64>,
    is_flag: bool,
    text: Option<String>,
    name: &str,
    unit: &str,
) -> pb::Metric {
    let value = match (number, is_flag, text) {
        (Some(n), true, _) => Some(pb::metric::Value::Flag(n != 0.0)),
        (Some(n), false, _) => Some(pb::metric::Value::Number(n)),
        (None, _, Some(t)) => Some(pb::metric::Value::Text(t)),
        _ => None,
    };
    pb::Metric {
        name: name.to_owned(),
        value,
        unit: unit.to_owned(),
    }
}

impl Queries {
    /// The queries over `store`, authorized by `objects`; `live` carries every stored batch.
    pub fn new(
        store: Store,
        objects: ObjectsClient,
        verifier: Verifier,
        live: broadcast::Sender<Arc<Vec<Incoming>>>,
        online_window: Duration,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                objects,
                verifier,
                live,
                online_window,
                shutdown,
            }),
        }
    }

    /// Registers the services, their access rules and the database with `server`.
    pub fn register(&self, server: &mut sipmba_runtime::Server) {
        server
            .add_service(pb::telemetry_service_server::TelemetryServiceServer::new(
                self.clone(),
            ))
            .add_service(pb::presence_service_server::PresenceServiceServer::new(
                self.clone(),
            ))
            .access(access_policy())
            .requires_database(self.inner.store.db().clone());
    }

    /// Whether `principal` may read the telemetry of `thing`.
    async fn authorize(&self, principal: &Principal, thing: Uuid) -> ServiceResult<()> {
        match principal.kind {
            Kind::Service if principal.has_scope(scopes::OBJECTS_ADMIN) => Ok(()),
            Kind::User => {
                match self
                    .inner
                    .objects
                    .check(
                        principal.subject,
                        thing,
                        pb::ChannelPermission::ReadTelemetry,
                    )
                    .await?
                {
                    // A disabled thing's past readings stay readable.
                    Decision::Allowed | Decision::ThingInactive => Ok(()),
                    Decision::NotReachable => {
                        Err(ServiceError::not_found(format!("thing {thing} not found")))
                    }
                    Decision::PermissionMissing => Err(ServiceError::PermissionDenied(format!(
                        "your grant on thing {thing} does not include CHANNEL_PERMISSION_READ_TELEMETRY"
                    ))),
                }
            }
            _ => Err(ServiceError::PermissionDenied(
                "reading telemetry is for users, and for services holding objects:admin".into(),
            )),
        }
    }

    async fn authorize_all(&self, principal: &Principal, things: &[Uuid]) -> ServiceResult<()> {
        for thing in things {
            self.authorize(principal, *thing).await?;
        }
        Ok(())
    }

    async fn get_latest(
        &self,
        principal: &Principal,
        r: &pb::GetLatestRequest,
    ) -> ServiceResult<pb::GetLatestResponse> {
        let things = things_of(&r.things)?;
        let names = metric_names(&r.metrics)?;
        self.authorize_all(principal, &things).await?;
        let mut rows = self.inner.store.latest(&things, &names).await?;
        let order: HashMap<Uuid, usize> = things.iter().enumerate().map(|(i, t)| (*t, i)).collect();
        rows.sort_by(|a, b| {
            (order.get(&a.thing_id), &a.name).cmp(&(order.get(&b.thing_id), &b.name))
        });
        Ok(pb::GetLatestResponse {
            values: rows
                .into_iter()
                .map(|l: latest::Model| pb::LatestMetric {
                    thing: Some(pb::ThingId {
                        value: l.thing_id.to_string(),
                    }),
                    metric: Some(metric_of(l.number, l.is_flag, l.text, &l.name, &l.unit)),
                    device_time: Some(timestamp_from_ms(l.device_ms)),
                    seq: l.seq.try_into().unwrap_or(0),
                })
                .collect(),
        })
    }

    async fn query_history(
        &self,
        principal: &Principal,
        r: &pb::QueryHistoryRequest,
    ) -> ServiceResult<pb::QueryHistoryResponse> {
        let thing = required_id("thing", r.thing.as_ref())?;
        if !valid_name(&r.metric) {
            return Err(ServiceError::invalid(
                "`metric` must be 1 to 64 characters of [A-Za-z0-9._-]",
            ));
        }
        let start = match &r.start {
            Some(t) => timestamp_to_ms("start", t)?,
            None => return Err(ServiceError::invalid("`start` is required")),
        };
        let end = match &r.end {
            Some(t) => timestamp_to_ms("end", t)?,
            None => now_ms(),
        };
        if start >= end {
            return Err(ServiceError::invalid(format!(
                "`start` ({start} ms) must be before `end` ({end} ms)"
            )));
        }
        let width = match &r.bucket {
            None => 0,
            Some(d) if d.seconds == 0 && d.nanos == 0 => 0,
            Some(d) if d.seconds < 0 || d.nanos < 0 => {
                return Err(ServiceError::invalid("`bucket` must not be negative"));
            }
            Some(d) => {
                let ms = d
                    .seconds
                    .saturating_mul(1000)
                    .saturating_add(i64::from(d.nanos / 1_000_000));
                if ms < 1000 {
                    return Err(ServiceError::invalid(
                        "`bucket` must be at least one second",
                    ));
                }
                let buckets = (end - start) / ms + 1;
                if buckets > MAX_BUCKETS {
                    return Err(ServiceError::invalid(format!(
                        "the range holds {buckets} buckets of {ms} ms; at most {MAX_BUCKETS}: widen `bucket` or narrow the range"
                    )));
                }
                ms
            }
        };
        let mut aggregations = HashSet::new();
        for a in &r.aggregations {
            match pb::Aggregation::try_from(*a) {
                Ok(pb::Aggregation::Unspecified) | Err(_) => {
                    return Err(ServiceError::invalid(format!(
                        "`aggregations` holds {a}, which is not an aggregation"
                    )));
                }
                Ok(a) => {
                    aggregations.insert(a);
                }
            }
        }
        self.authorize(principal, thing).await?;
        let known = self
            .inner
            .store
            .latest(&[thing], std::slice::from_ref(&r.metric))
            .await?;
        let Some(known) = known.into_iter().next() else {
            return Err(ServiceError::invalid(format!(
                "thing {thing} has never reported a metric named {:?}",
                r.metric
            )));
        };
        let is_text = known.text.is_some();
        if width > 0 && is_text && aggregations.iter().any(|a| *a != pb::Aggregation::Count) {
            return Err(ServiceError::invalid(format!(
                "metric {:?} holds text: only AGGREGATION_COUNT applies",
                r.metric
            )));
        }
        let filters = format!(
            "{thing}/{}/{start}/{end}/{width}/{:?}",
            r.metric, r.aggregations
        );
        let page = Page::decode(r.page.as_ref(), &filters)?;
        let cursor = page.after.map(|u| {
            let (ms, seq) = u.as_u64_pair();
            (ms as i64, seq as i64)
        });
        let key = |ms: i64, seq: i64| Uuid::from_u64_pair(ms as u64, seq as u64);
        if width == 0 {
            let mut points = self
                .inner
                .store
                .points(thing, &r.metric, (start, end), cursor, page.fetch_limit())
                .await?;
            let next_page_token =
                page.finish(&mut points, |p: &metrics::Model| key(p.device_ms, p.seq));
            return Ok(pb::QueryHistoryResponse {
                points: points
                    .into_iter()
                    .map(|p| pb::HistoryPoint {
                        seq: p.seq.try_into().unwrap_or(0),
                        device_time: Some(timestamp_from_ms(p.device_ms)),
                        received_time: Some(timestamp_from_ms(p.received_ms)),
                        metric: Some(metric_of(p.number, p.is_flag, p.text, &p.name, &p.unit)),
                    })
                    .collect(),
                buckets: vec![],
                next_page_token,
            });
        }
        let mut buckets = self
            .inner
            .store
            .buckets(
                thing,
                &r.metric,
                (start, end),
                width,
                cursor.map(|c| c.0),
                page.fetch_limit(),
                now_ms(),
            )
            .await?;
        let next_page_token = page.finish(&mut buckets, |b| key(b.start_ms, 0));
        let wants = |a: pb::Aggregation| {
            (aggregations.is_empty() || aggregations.contains(&a))
                && (!is_text || a == pb::Aggregation::Count)
        };
        Ok(pb::QueryHistoryResponse {
            points: vec![],
            buckets: buckets
                .into_iter()
                .map(|b| pb::HistoryBucket {
                    start: Some(timestamp_from_ms(b.start_ms)),
                    avg: b.avg.filter(|_| wants(pb::Aggregation::Avg)),
                    min: b.min.filter(|_| wants(pb::Aggregation::Min)),
                    max: b.max.filter(|_| wants(pb::Aggregation::Max)),
                    sum: b.sum.filter(|_| wants(pb::Aggregation::Sum)),
                    count: Some(b.count).filter(|_| wants(pb::Aggregation::Count)),
                })
                .collect(),
            next_page_token,
        })
    }

    async fn get_presence(
        &self,
        principal: &Principal,
        r: &pb::GetPresenceRequest,
    ) -> ServiceResult<pb::GetPresenceResponse> {
        let things = things_of(&r.things)?;
        self.authorize_all(principal, &things).await?;
        let seen = self.inner.store.presence(&things).await?;
        let window = i64::try_from(self.inner.online_window.as_millis()).unwrap_or(i64::MAX);
        let now = now_ms();
        let mut presences = Vec::with_capacity(things.len());
        for thing in things {
            let last_seen = seen.get(&thing).copied();
            presences.push(pb::ThingPresence {
                thing: Some(pb::ThingId {
                    value: thing.to_string(),
                }),
                last_seen: last_seen.map(timestamp_from_ms),
                online: last_seen.is_some_and(|ms| now - ms <= window),
                last_seq: self.inner.store.last_seq(thing).await?,
            });
        }
        Ok(pb::GetPresenceResponse {
            presences,
            online_window: Some(prost_types::Duration {
                seconds: i64::try_from(self.inner.online_window.as_secs()).unwrap_or(i64::MAX),
                nanos: 0,
            }),
        })
    }

    /// The things of `channel` whose telemetry `principal` may read.
    async fn channel_things(
        &self,
        principal: &Principal,
        channel: &pb::ChannelId,
    ) -> ServiceResult<HashSet<Uuid>> {
        let id = required_id("channel", Some(channel))?;
        if principal.kind != Kind::User {
            return Err(ServiceError::invalid(
                "services subscribe by things; a channel subscription is for users",
            ));
        }
        self.inner
            .objects
            .accessible_things(
                principal.subject,
                pb::list_accessible_things_request::Selection::Channel(channel.clone()),
                &[pb::ChannelPermission::ReadTelemetry],
            )
            .await?
            .map(|things| things.into_iter().collect())
            .ok_or_else(|| ServiceError::not_found(format!("channel {id} not found")))
    }

    async fn subscribe(
        self,
        principal: Principal,
        target: Target,
        names: Vec<String>,
        tx: mpsc::Sender<Result<pb::TelemetryEvent, Status>>,
    ) {
        let mut live = self.inner.live.subscribe();
        let (mut wanted, things, target_channel, recheck_every) = match target {
            Target::Things(things) => (
                things.iter().copied().collect::<HashSet<Uuid>>(),
                Some(things),
                None,
                Duration::from_secs(30),
            ),
            Target::Channel(channel, things) => (things, None, Some(channel), CHANNEL_REFRESH),
        };
        let mut last: HashMap<Uuid, u64> = HashMap::new();
        let until_expiry = Duration::from_secs(
            u64::try_from(principal.expires_at - sipmba_auth::signing::unix_now()).unwrap_or(0),
        );
        let expiry = tokio::time::sleep(until_expiry);
        tokio::pin!(expiry);
        let mut recheck = tokio::time::interval(recheck_every);
        recheck.tick().await;
        loop {
            let batch = tokio::select! {
                batch = live.recv() => batch,
                () = &mut expiry => {
                    let _ = tx.send(Err(Status::unauthenticated("the access token expired while subscribed"))).await;
                    return;
                }
                _ = recheck.tick() => {
                    if let Err(lapsed) = self.inner.verifier.still_valid(&principal) {
                        let _ = tx.send(Err(lapsed.status("while subscribed"))).await;
                        return;
                    }
                    let checked = match (&things, &target_channel) {
                        (Some(things), _) => self.authorize_all(&principal, things).await,
                        (None, Some(channel)) => self.channel_things(&principal, channel).await.map(|now| wanted = now),
                        (None, None) => Ok(()),
                    };
                    if let Err(e) = checked {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                    continue;
                }
                () = tx.closed() => return,
                () = self.inner.shutdown.clone().wait() => return,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let _ = tx
                        .send(Err(sipmba_runtime::exhausted(
                            &format!("the subscriber fell {missed} batches behind; subscribe again and backfill with QueryHistory"),
                            Duration::from_secs(1),
                        )))
                        .await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            for incoming in batch.iter().filter(|i| wanted.contains(&i.thing)) {
                let seen = last.entry(incoming.thing).or_insert(0);
                if incoming.reading.seq <= *seen {
                    continue;
                }
                *seen = incoming.reading.seq;
                let mut reading = incoming.reading.clone();
                if !names.is_empty() {
                    reading.metrics.retain(|m| names.contains(&m.name));
                    reading.payload.clear();
                }
                let event = pb::TelemetryEvent {
                    thing: Some(pb::ThingId {
                        value: incoming.thing.to_string(),
                    }),
                    reading: Some(reading),
                    received_time: Some(timestamp_from_ms(incoming.received_ms)),
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::TelemetryEvent, Status>> + Send>>;

#[tonic::async_trait]
impl TelemetryService for Queries {
    type SubscribeStream = EventStream;

    async fn get_latest(
        &self,
        req: Request<pb::GetLatestRequest>,
    ) -> Result<Response<pb::GetLatestResponse>, Status> {
        let principal = Principal::from_request(&req)?.clone();
        Ok(Response::new(
            Queries::get_latest(self, &principal, req.get_ref()).await?,
        ))
    }

    async fn query_history(
        &self,
        req: Request<pb::QueryHistoryRequest>,
    ) -> Result<Response<pb::QueryHistoryResponse>, Status> {
        let principal = Principal::from_request(&req)?.clone();
        Ok(Response::new(
            Queries::query_history(self, &principal, req.get_ref()).await?,
        ))
    }

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let principal = Principal::from_request(&req)?.clone();
        let r = req.get_ref();
        let names = metric_names(&r.metrics)?;
        let target = match (&r.channel, r.things.is_empty()) {
            (Some(_), false) => {
                return Err(Status::invalid_argument(
                    "set exactly one of `things` and `channel`",
                ));
            }
            (Some(channel), true) => Target::Channel(
                channel.clone(),
                self.channel_things(&principal, channel).await?,
            ),
            (None, _) => {
                let things = things_of(&r.things)?;
                self.authorize_all(&principal, &things).await?;
                Target::Things(things)
            }
        };
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(self.clone().subscribe(principal, target, names, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl PresenceService for Queries {
    async fn get_presence(
        &self,
        req: Request<pb::GetPresenceRequest>,
    ) -> Result<Response<pb::GetPresenceResponse>, Status> {
        let principal = Principal::from_request(&req)?.clone();
        Ok(Response::new(
            Queries::get_presence(self, &principal, req.get_ref()).await?,
        ))
    }
}
