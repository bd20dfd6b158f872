//! `sipmba commands|telemetry|rules`.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use sipmba_proto::v1 as pb;
use uuid::Uuid;

use super::{
    CliError, Context, Ctx, Exit, Session, duration, key_value,
    objects::{resolve_channel, resolve_thing, resolve_things},
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

/// `sipmba rules`.
#[derive(Debug, clap::Subcommand)]
pub enum Rules {
    /// Creates a rule: when `--when` becomes true for a thing, send it `--then`.
    Create {
        /// Name, unique among your rules.
        name: String,
        /// The thing watched (name or id).
        #[arg(long, group = "selector")]
        thing: Option<String>,
        /// Every thing of this channel you may read and command.
        #[arg(long, group = "selector")]
        channel: Option<String>,
        /// Every thing of yours with these labels (`key` or `key=value`, repeatable).
        #[arg(long = "label", group = "selector", value_parser = key_value)]
        labels: Vec<(String, Option<String>)>,
        /// The condition: `<metric> <op> <number>`, op one of > >= < <= == !=, e.g. "temperature > 30".
        #[arg(long)]
        when: String,
        /// The command sent, e.g. `fan.on`.
        #[arg(long)]
        then: String,
        /// The command's payload.
        #[arg(long, default_value = "")]
        payload: String,
        /// The condition must hold this long (device time) before the rule fires.
        #[arg(long, value_parser = duration)]
        hold: Option<Duration>,
        /// After firing for a thing, wait at least this long before firing again for it.
        #[arg(long, value_parser = duration)]
        cooldown: Option<Duration>,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Lists your rules.
    List,
    /// Shows a rule.
    Show {
        /// Rule name or id.
        rule: String,
    },
    /// Enables a rule.
    Enable {
        /// Rule name or id.
        rule: String,
    },
    /// Disables a rule: it stops firing.
    Disable {
        /// Rule name or id.
        rule: String,
    },
    /// Deletes a rule and its firings.
    Delete {
        /// Rule name or id.
        rule: String,
    },
    /// When a rule fired, newest first, with the command each firing sent.
    Firings {
        /// Rule name or id.
        rule: String,
    },
}

fn command_state(state: i32) -> &'static str {
    match pb::CommandState::try_from(state) {
        Ok(pb::CommandState::Queued) => "QUEUED",
        Ok(pb::CommandState::Delivered) => "DELIVERED",
        Ok(pb::CommandState::Acked) => "ACKED",
        Ok(pb::CommandState::Failed) => "FAILED",
        Ok(pb::CommandState::Expired) => "EXPIRED",
        _ => "UNKNOWN",
    }
}

fn is_final(state: i32) -> bool {
    matches!(
        pb::CommandState::try_from(state),
        Ok(pb::CommandState::Acked | pb::CommandState::Failed | pb::CommandState::Expired)
    )
}

fn command_fields(c: &pb::Command) -> Vec<(&'static str, Value)> {
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

fn command_id(id: Uuid) -> Option<pb::CommandId> {
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
async fn watch(ctx: &Ctx, s: &Session, id: Uuid, timeout: Duration) -> Result<(), CliError> {
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

fn thing_ids(ids: &[Uuid]) -> Vec<pb::ThingId> {
    ids.iter()
        .map(|id| pb::ThingId {
            value: id.to_string(),
        })
        .collect()
}

async fn print_latest(
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
async fn history(
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
async fn tail(
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
fn print_event(format: Format, event: &pb::TelemetryEvent) -> bool {
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

/// Parses "temperature > 30" into (metric, comparison, threshold).
fn condition(text: &str) -> Result<(String, pb::Comparison, f64), CliError> {
    let ops = [
        (">=", pb::Comparison::Ge),
        ("<=", pb::Comparison::Le),
        ("==", pb::Comparison::Eq),
        ("!=", pb::Comparison::Ne),
        (">", pb::Comparison::Gt),
        ("<", pb::Comparison::Lt),
    ];
    let bad = || {
        CliError::usage(format!(
            "--when {text:?}: expected `<metric> <op> <number>` with op one of > >= < <= == !=, e.g. \"temperature > 30\""
        ))
    };
    let (at, op, comparison) = ops
        .iter()
        .filter_map(|(op, c)| text.find(op).map(|at| (at, *op, *c)))
        .min_by_key(|(at, op, _)| (*at, std::cmp::Reverse(op.len())))
        .ok_or_else(bad)?;
    let metric = text[..at].trim();
    let threshold: f64 = text[at + op.len()..].trim().parse().map_err(|_| bad())?;
    if metric.is_empty() {
        return Err(bad());
    }
    Ok((metric.to_owned(), comparison, threshold))
}

fn comparison_text(c: i32) -> &'static str {
    match pb::Comparison::try_from(c) {
        Ok(pb::Comparison::Gt) => ">",
        Ok(pb::Comparison::Ge) => ">=",
        Ok(pb::Comparison::Lt) => "<",
        Ok(pb::Comparison::Le) => "<=",
        Ok(pb::Comparison::Eq) => "==",
        Ok(pb::Comparison::Ne) => "!=",
        _ => "?",
    }
}

fn rule_fields(r: &pb::Rule) -> Vec<(&'static str, Value)> {
    let selector = match &r.selector {
        Some(pb::rule::Selector::Thing(t)) => format!("thing {}", t.value),
        Some(pb::rule::Selector::Channel(c)) => format!("channel {}", c.value),
        Some(pb::rule::Selector::Labels(set)) => {
            let labels: Vec<String> = set
                .selectors
                .iter()
                .map(|l| match &l.value {
                    Some(v) => format!("{}={v}", l.key),
                    None => l.key.clone(),
                })
                .collect();
            format!("labels {}", labels.join(","))
        }
        None => String::new(),
    };
    let secs = |d: &Option<prost_types::Duration>| d.as_ref().map_or(0, |d| d.seconds);
    vec![
        ("id", r.id.as_ref().map(|i| i.value.clone()).into()),
        ("name", r.name.clone().into()),
        ("selector", selector.into()),
        (
            "when",
            format!(
                "{} {} {}",
                r.metric,
                comparison_text(r.comparison),
                r.threshold
            )
            .into(),
        ),
        ("then", r.action.as_ref().map(|a| a.name.clone()).into()),
        ("hold_secs", secs(&r.hold).into()),
        ("cooldown_secs", secs(&r.cooldown).into()),
        ("enabled", r.enabled.into()),
    ]
}

/// A rule by name (one of the caller's) or id.
async fn resolve_rule(s: &Session, name: &str) -> Result<pb::RuleId, CliError> {
    if Uuid::parse_str(name).is_ok() {
        return Ok(pb::RuleId {
            value: name.to_owned(),
        });
    }
    all_rules(s)
        .await?
        .into_iter()
        .find(|r| r.name == name)
        .and_then(|r| r.id)
        .ok_or_else(|| {
            CliError::new(Exit::NotFound, format!("no rule named {name:?}"))
                .hint("see `sipmba rules list`")
        })
}

async fn all_rules(s: &Session) -> Result<Vec<pb::Rule>, CliError> {
    let mut client = pb::rule_service_client::RuleServiceClient::new(s.channel.clone());
    let (mut rules, mut token) = (Vec::new(), String::new());
    loop {
        let answer = client
            .list_rules(s.req(pb::ListRulesRequest {
                owner: None,
                page: page(token),
            }))
            .await
            .doing("listing rules")?;
        rules.extend(answer.rules);
        if answer.next_page_token.is_empty() {
            return Ok(rules);
        }
        token = answer.next_page_token;
    }
}

/// Runs `sipmba rules`.
pub async fn rules(ctx: &Ctx, command: Rules) -> Result<(), CliError> {
    let s = ctx.session().await?;
    let mut client = pb::rule_service_client::RuleServiceClient::new(s.channel.clone());
    match command {
        Rules::Create {
            name,
            thing,
            channel,
            labels,
            when,
            then,
            payload,
            hold,
            cooldown,
            disabled,
        } => {
            let (metric, comparison, threshold) = condition(&when)?;
            let selector = match (thing, channel) {
                (Some(t), _) => pb::rule::Selector::Thing(pb::ThingId {
                    value: resolve_thing(&s, &t).await?.to_string(),
                }),
                (None, Some(c)) => pb::rule::Selector::Channel(pb::ChannelId {
                    value: resolve_channel(&s, &c).await?.to_string(),
                }),
                (None, None) if !labels.is_empty() => {
                    pb::rule::Selector::Labels(pb::LabelSelectorSet {
                        selectors: labels
                            .into_iter()
                            .map(|(key, value)| pb::LabelSelector { key, value })
                            .collect(),
                    })
                }
                (None, None) => {
                    return Err(CliError::usage(
                        "say which things the rule watches: --thing, --channel or --label",
                    ));
                }
            };
            let rule = client
                .create_rule(s.req(pb::CreateRuleRequest {
                    rule: Some(pb::Rule {
                        name,
                        selector: Some(selector),
                        metric,
                        comparison: comparison as i32,
                        threshold,
                        hold: hold.map(pb_duration),
                        cooldown: cooldown.map(pb_duration),
                        action: Some(pb::CommandTemplate {
                            name: then,
                            payload: payload.into_bytes(),
                            ttl: None,
                        }),
                        enabled: !disabled,
                        ..Default::default()
                    }),
                }))
                .await
                .doing("creating the rule")?;
            output::print_object(ctx.format, &rule_fields(&rule));
        }
        Rules::List => {
            let rules = all_rules(&s).await?;
            let mut rows = Rows::new(&["id", "name", "selector", "when", "then", "enabled"]);
            for r in &rules {
                let fields = rule_fields(r);
                let get = |k: &str| {
                    fields
                        .iter()
                        .find(|(name, _)| *name == k)
                        .map_or(Value::Null, |(_, v)| v.clone())
                };
                rows.push(vec![
                    get("id"),
                    get("name"),
                    get("selector"),
                    get("when"),
                    get("then"),
                    get("enabled"),
                ]);
            }
            rows.print(
                ctx.format,
                "no rules yet: create one with `sipmba rules create`",
            );
        }
        Rules::Show { rule } => {
            let id = resolve_rule(&s, &rule).await?;
            let rule = client
                .get_rule(s.req(pb::GetRuleRequest { id: Some(id) }))
                .await
                .doing("reading the rule")?;
            output::print_object(ctx.format, &rule_fields(&rule));
        }
        Rules::Enable { rule } => set_enabled(ctx, &s, &rule, true).await?,
        Rules::Disable { rule } => set_enabled(ctx, &s, &rule, false).await?,
        Rules::Delete { rule } => {
            let id = resolve_rule(&s, &rule).await?;
            client
                .delete_rule(s.req(pb::DeleteRuleRequest {
                    id: Some(id.clone()),
                }))
                .await
                .doing("deleting the rule")?;
            eprintln!("deleted rule {}", id.value);
        }
        Rules::Firings { rule } => {
            let id = resolve_rule(&s, &rule).await?;
            let answer = client
                .list_firings(s.req(pb::ListFiringsRequest {
                    rule: Some(id),
                    page: page(String::new()),
                }))
                .await
                .doing("listing firings")?;
            let mut rows = Rows::new(&["fired_at", "thing", "value", "seq", "command", "detail"]);
            for f in &answer.firings {
                rows.push(vec![
                    output::time(f.fired_at.as_ref()),
                    f.thing.as_ref().map(|i| i.value.clone()).into(),
                    json!(f.value),
                    f.seq.into(),
                    f.command.as_ref().map(|i| i.value.clone()).into(),
                    f.detail.clone().into(),
                ]);
            }
            rows.print(ctx.format, "the rule has not fired yet");
        }
    }
    Ok(())
}

async fn set_enabled(ctx: &Ctx, s: &Session, rule: &str, enabled: bool) -> Result<(), CliError> {
    let id = resolve_rule(s, rule).await?;
    let rule = pb::rule_service_client::RuleServiceClient::new(s.channel.clone())
        .update_rule(s.req(pb::UpdateRuleRequest {
            rule: Some(pb::Rule {
                id: Some(id),
                enabled,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["enabled".into()],
            }),
        }))
        .await
        .doing("updating the rule")?;
    output::print_object(ctx.format, &rule_fields(&rule));
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn conditions_parse_with_or_without_spaces() {
        let (m, c, t) = condition("temperature > 30").unwrap();
        assert_eq!(
            (m.as_str(), c, t),
            ("temperature", pb::Comparison::Gt, 30.0)
        );
        let (m, c, t) = condition("humidity<=12.5").unwrap();
        assert_eq!((m.as_str(), c, t), ("humidity", pb::Comparison::Le, 12.5));
        let (_, c, _) = condition("x != -1").unwrap();
        assert_eq!(c, pb::Comparison::Ne);
        let (_, c, _) = condition("x >= 1").unwrap();
        assert_eq!(c, pb::Comparison::Ge);
        assert_eq!(condition("temperature 30").unwrap_err().exit, Exit::Usage);
        assert_eq!(condition("> 30").unwrap_err().exit, Exit::Usage);
        assert_eq!(condition("t > warm").unwrap_err().exit, Exit::Usage);
    }
}
