//! `sipmba telemetry`.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use sipmba_proto::v1 as pb;
use uuid::Uuid;

use super::{
    CliError, Context, Ctx, Exit, Session, duration,
    names::{resolve_channel, resolve_thing, resolve_things},
    output,
    output::{Format, Rows},
    pb_duration,
};

/// `sipmba telemetry`.
#[derive(Debug, clap::Subcommand)]
pub enum Telemetry {
    /// The latest value of every metric of the things.
    Latest {
        /// Thing names or ids.
        #[arg(required = true)]
        things: Vec<String>,
        /// Only this metric (repeatable).
        #[arg(long = "metric", short = 'm')]
        metrics: Vec<String>,
    },
    /// A metric's stored history: every point, or buckets with --bucket.
    History {
        /// Thing name or id.
        thing: String,
        /// The metric.
        metric: String,
        /// From this long ago.
        #[arg(long, value_parser = duration, default_value = "1h")]
        since: Duration,
        /// Aggregate into buckets this long (e.g. 1m), epoch-aligned.
        #[arg(long, value_parser = duration)]
        bucket: Option<Duration>,
        /// Aggregations per bucket (repeatable; default avg, min, max, count).
        #[arg(long = "agg", value_enum)]
        aggregations: Vec<Agg>,
        /// At most this many points or buckets.
        #[arg(long, default_value = "1000")]
        limit: usize,
    },
    /// The latest values, and with -f every new reading as it arrives.
    Tail {
        /// Thing names or ids (or --channel).
        things: Vec<String>,
        /// Every readable thing of this channel, as they join it.
        #[arg(long, conflicts_with = "things")]
        channel: Option<String>,
        /// Only this metric (repeatable).
        #[arg(long = "metric", short = 'm')]
        metrics: Vec<String>,
        /// Keep printing new readings (until Ctrl-C).
        #[arg(long, short = 'f')]
        follow: bool,
        /// With -f, stop after this many new readings.
        #[arg(long, short = 'n')]
        count: Option<u64>,
    },
}

impl Agg {
    /// Its column in `telemetry history --bucket`.
    fn name(self) -> &'static str {
        match self {
            Agg::Avg => "avg",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Sum => "sum",
            Agg::Count => "count",
        }
    }
}

/// A bucket aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Agg {
    /// Mean.
    Avg,
    /// Lowest.
    Min,
    /// Highest.
    Max,
    /// Total.
    Sum,
    /// Number of points.
    Count,
}

/// Runs `sipmba telemetry`.
pub async fn telemetry(ctx: &Ctx, command: Telemetry) -> Result<(), CliError> {
    let s = ctx.session().await?;
    match command {
        Telemetry::Latest { things, metrics } => {
            let ids = resolve_things(&s, &things).await?;
            print_latest(ctx, &s, &ids, &metrics).await
        }
        Telemetry::History {
            thing,
            metric,
            since,
            bucket,
            aggregations,
            limit,
        } => history(ctx, &s, &thing, metric, since, bucket, aggregations, limit).await,
        Telemetry::Tail {
            things,
            channel,
            metrics,
            follow,
            count,
        } => {
            let (ids, channel) = match channel {
                Some(c) => (Vec::new(), Some(resolve_channel(&s, &c).await?)),
                None if things.is_empty() => {
                    return Err(CliError::usage(
                        "name the things to tail, or give --channel",
                    ));
                }
                None => (resolve_things(&s, &things).await?, None),
            };
            if !ids.is_empty() {
                print_latest(ctx, &s, &ids, &metrics).await?;
            }
            if follow {
                tail(ctx, s, ids, channel, metrics, count).await?;
            }
            Ok(())
        }
    }
}

pub(super) fn thing_ids(ids: &[Uuid]) -> Vec<pb::ThingId> {
    ids.iter()
        .map(|id| pb::ThingId {
            value: id.to_string(),
        })
        .collect()
}

pub(super) async fn print_latest(
    ctx: &Ctx,
    s: &Session,
    ids: &[Uuid],
    metrics: &[String],
) -> Result<(), CliError> {
    let answer = pb::telemetry_service_client::TelemetryServiceClient::new(s.channel.clone())
        .get_latest(s.req(pb::GetLatestRequest {
            things: thing_ids(ids),
            metrics: metrics.to_vec(),
        }))
        .await
        .doing("reading the latest values")?;
    let mut rows = Rows::new(&["thing", "metric", "value", "unit", "time", "seq"]);
    for v in &answer.values {
        let Some(m) = &v.metric else { continue };
        rows.push(vec![
            v.thing.as_ref().map(|i| i.value.clone()).into(),
            m.name.clone().into(),
            output::metric_value(m),
            m.unit.clone().into(),
            output::time(v.device_time.as_ref()),
            v.seq.into(),
        ]);
    }
    rows.print(ctx.format, "no readings stored yet");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn history(
    ctx: &Ctx,
    s: &Session,
    thing: &str,
    metric: String,
    since: Duration,
    bucket: Option<Duration>,
    aggregations: Vec<Agg>,
    limit: usize,
) -> Result<(), CliError> {
    let thing = resolve_thing(s, thing).await?;
    let aggregations = if aggregations.is_empty() {
        vec![Agg::Avg, Agg::Min, Agg::Max, Agg::Count]
    } else {
        aggregations
    };
    let mut client = pb::telemetry_service_client::TelemetryServiceClient::new(s.channel.clone());
    let now = SystemTime::now();
    let (mut points, mut buckets, mut token) = (Vec::new(), Vec::new(), String::new());
    let _spinner = output::Spinner::start("querying");
    loop {
        let answer = client
            .query_history(s.req(pb::QueryHistoryRequest {
                thing: Some(pb::ThingId {
                    value: thing.to_string(),
                }),
                metric: metric.clone(),
                start: Some((now - since).into()),
                end: Some(now.into()),
                bucket: bucket.map(pb_duration),
                aggregations: if bucket.is_some() {
                    aggregations
                        .iter()
                        .map(|a| match a {
                            Agg::Avg => pb::Aggregation::Avg as i32,
                            Agg::Min => pb::Aggregation::Min as i32,
                            Agg::Max => pb::Aggregation::Max as i32,
                            Agg::Sum => pb::Aggregation::Sum as i32,
                            Agg::Count => pb::Aggregation::Count as i32,
                        })
                        .collect()
                } else {
                    Vec::new()
                },
                page: Some(pb::PageRequest {
                    page_size: 1000,
                    page_token: token,
                }),
            }))
            .await
            .doing("querying the history")?;
        points.extend(answer.points);
        buckets.extend(answer.buckets);
        if answer.next_page_token.is_empty() || points.len() + buckets.len() >= limit {
            break;
        }
        token = answer.next_page_token;
    }
    drop(_spinner);
    if bucket.is_some() {
        // A column per aggregation asked for, in the order asked.
        let mut columns = vec!["start"];
        columns.extend(aggregations.iter().map(|a| a.name()));
        let mut rows = Rows::new(&columns);
        for b in buckets.iter().take(limit) {
            let mut row = vec![output::time(b.start.as_ref())];
            row.extend(aggregations.iter().map(|a| match a {
                Agg::Avg => json!(b.avg),
                Agg::Min => json!(b.min),
                Agg::Max => json!(b.max),
                Agg::Sum => json!(b.sum),
                Agg::Count => json!(b.count),
            }));
            rows.push(row);
        }
        rows.print(ctx.format, "no points in that time");
    } else {
        let mut rows = Rows::new(&["time", "value", "unit", "seq"]);
        for p in points.iter().take(limit) {
            let Some(m) = &p.metric else { continue };
            rows.push(vec![
                output::time(p.device_time.as_ref()),
                output::metric_value(m),
                m.unit.clone().into(),
                p.seq.into(),
            ]);
        }
        rows.print(ctx.format, "no points in that time");
    }
    Ok(())
}

/// Prints readings as they arrive; subscribes again with a fresh login when the token expires.
pub(super) async fn tail(
    ctx: &Ctx,
    mut s: Session,
    ids: Vec<Uuid>,
    channel: Option<Uuid>,
    metrics: Vec<String>,
    count: Option<u64>,
) -> Result<(), CliError> {
    let mut seen = 0u64;
    loop {
        let mut client =
            pb::telemetry_service_client::TelemetryServiceClient::new(s.channel.clone());
        let mut stream = client
            .subscribe(s.req(pb::SubscribeRequest {
                things: thing_ids(&ids),
                channel: channel.map(|c| pb::ChannelId {
                    value: c.to_string(),
                }),
                metrics: metrics.clone(),
            }))
            .await
            .doing("subscribing")?;
        if ctx.format == Format::Table {
            eprintln!("following new readings (Ctrl-C to stop)");
        }
        let ended = loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    if !print_event(ctx.format, &event) {
                        return Ok(());
                    }
                    seen += 1;
                    if count.is_some_and(|n| seen >= n) {
                        return Ok(());
                    }
                }
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        };
        match ended {
            // The access token expired: carry on with a refreshed login.
            Some(status) if status.code() == tonic::Code::Unauthenticated => {
                s = ctx.session().await?;
            }
            Some(status) => return Err(CliError::status("following readings", &status)),
            None => {
                return Err(CliError::new(
                    Exit::Unreachable,
                    "the server ended the subscription (shutting down?)",
                ));
            }
        }
    }
}

/// Prints one reading; false when standard output is gone.
pub(super) fn print_event(format: Format, event: &pb::TelemetryEvent) -> bool {
    let thing = event
        .thing
        .as_ref()
        .map(|t| t.value.clone())
        .unwrap_or_default();
    let Some(reading) = &event.reading else {
        return true;
    };
    let time = output::time(reading.device_time.as_ref());
    let metrics: Vec<String> = reading
        .metrics
        .iter()
        .map(|m| format!("{}={}", m.name, output::metric_text(m)))
        .collect();
    let values: serde_json::Map<String, Value> = reading
        .metrics
        .iter()
        .map(|m| (m.name.clone(), output::metric_value(m)))
        .collect();
    output::print_line(
        format,
        &format!(
            "{}  {thing}  #{}  {}",
            time.as_str().unwrap_or("-"),
            reading.seq,
            metrics.join("  ")
        ),
        &[
            ("thing", thing.clone().into()),
            ("seq", reading.seq.into()),
            ("time", time.clone()),
            ("metrics", Value::Object(values)),
        ],
    )
}
