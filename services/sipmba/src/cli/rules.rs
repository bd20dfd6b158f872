//! `sipmba rules`.

use std::time::Duration;

use serde_json::{Value, json};
use sipmba_proto::v1 as pb;
use uuid::Uuid;

use super::{
    CliError, Context, Ctx, Exit, Session, duration, key_value,
    names::{resolve_channel, resolve_thing},
    output,
    output::Rows,
    page, pb_duration,
};

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

/// Parses "temperature > 30" into (metric, comparison, threshold).
pub fn condition(text: &str) -> Result<(String, pb::Comparison, f64), CliError> {
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
    let number = text[at + op.len()..].trim();
    // The console's grammar, and a finite value: Rust alone would also take `inf` and `NaN`.
    let threshold: f64 = Some(number)
        .filter(|n| is_decimal(n))
        .and_then(|n| n.parse().ok())
        .filter(|t: &f64| t.is_finite())
        .ok_or_else(bad)?;
    if metric.is_empty() {
        return Err(bad());
    }
    Ok((metric.to_owned(), comparison, threshold))
}

/// A decimal number as the console's rule form takes it:
/// `[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?`.
fn is_decimal(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let whole = digits(i);
    let mut fraction = 0;
    let mut end = whole;
    if b.get(whole) == Some(&b'.') {
        end = digits(whole + 1);
        fraction = end - whole - 1;
    }
    if whole == i && fraction == 0 {
        return false;
    }
    i = end;
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        i += usize::from(matches!(b.get(i), Some(b'+' | b'-')));
        let exponent = digits(i);
        if exponent == i {
            return false;
        }
        i = exponent;
    }
    i == b.len()
}

pub(super) fn comparison_text(c: i32) -> &'static str {
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

pub(super) fn rule_fields(r: &pb::Rule) -> Vec<(&'static str, Value)> {
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
pub(super) async fn resolve_rule(s: &Session, name: &str) -> Result<pb::RuleId, CliError> {
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

pub(super) async fn all_rules(s: &Session) -> Result<Vec<pb::Rule>, CliError> {
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

pub(super) async fn set_enabled(
    ctx: &Ctx,
    s: &Session,
    rule: &str,
    enabled: bool,
) -> Result<(), CliError> {
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

    /// The cases the console's parser is held to as well (console/tests/condition.spec.ts).
    #[test]
    fn conditions_parse_as_the_console_parses_them() {
        let cases: serde_json::Value =
            serde_json::from_str(include_str!("../../../../testdata/rule-conditions.json"))
                .unwrap();
        for case in cases["valid"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let (metric, comparison, threshold) =
                condition(text).unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
            assert_eq!(metric, case["metric"].as_str().unwrap(), "{text:?}");
            assert_eq!(
                comparison_text(comparison as i32),
                case["op"].as_str().unwrap(),
                "{text:?}"
            );
            assert_eq!(threshold, case["threshold"].as_f64().unwrap(), "{text:?}");
        }
        for case in cases["invalid"].as_array().unwrap() {
            let text = case.as_str().unwrap();
            assert!(condition(text).is_err(), "{text:?} is refused");
        }
    }
}
