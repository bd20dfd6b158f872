//! The gRPC front of rules: `RuleService`. A user owns the rules it creates; each rule acts with
//! its owner's permissions, checked at Objects when the rule is written and again by Control for
//! every command it sends.

use std::time::Duration;

use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, SqlErr,
};
use sipmba_auth::{Access, Kind, Principal, scopes};
use sipmba_proto::v1::{self as pb, rule_service_server::RuleService};
use sipmba_runtime::{
    ServiceError, ServiceResult,
    ids::{Page, now_ms, optional_id, required_id, timestamp_from_ms, valid_name},
    objects::Decision,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    entity::{definitions as rules, firings, states},
    rules::{PENDING, REFUSED, Rules, decode_selector, encode_selector},
};

/// Longest rule name.
pub const MAX_NAME: usize = 128;
/// Longest hold.
pub const MAX_HOLD: Duration = Duration::from_secs(24 * 3600);
/// Longest cooldown.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest command payload.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Most label selectors.
pub const MAX_SELECTORS: usize = 16;

/// What each RuleService method needs.
pub fn access_policy() -> Vec<(&'static str, Access)> {
    vec![
        (
            "/sipmba.v1.RuleService/CreateRule",
            Access::Scope(scopes::RULES_WRITE),
        ),
        (
            "/sipmba.v1.RuleService/UpdateRule",
            Access::Scope(scopes::RULES_WRITE),
        ),
        (
            "/sipmba.v1.RuleService/DeleteRule",
            Access::Scope(scopes::RULES_WRITE),
        ),
        (
            "/sipmba.v1.RuleService/GetRule",
            Access::Scope(scopes::RULES_READ),
        ),
        (
            "/sipmba.v1.RuleService/ListRules",
            Access::Scope(scopes::RULES_READ),
        ),
        (
            "/sipmba.v1.RuleService/ListFirings",
            Access::Scope(scopes::RULES_READ),
        ),
    ]
}

/// RuleService. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RulesApi {
    rules: Rules,
    max_per_owner: u64,
}

fn user_of<T>(req: &Request<T>) -> ServiceResult<Uuid> {
    let principal = Principal::from_request(req)?;
    if principal.kind != Kind::User {
        return Err(ServiceError::PermissionDenied(
            "rules are owned by users; use a user's token".into(),
        ));
    }
    Ok(principal.subject)
}

fn duration_ms(
    field: &str,
    d: Option<&prost_types::Duration>,
    max: Duration,
) -> ServiceResult<i64> {
    let Some(d) = d else { return Ok(0) };
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ServiceError::invalid(format!(
            "`{field}` must not be negative"
        )));
    }
    let ms = d
        .seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(d.nanos / 1_000_000));
    let max_ms = i64::try_from(max.as_millis()).unwrap_or(i64::MAX);
    if ms > max_ms {
        return Err(ServiceError::invalid(format!(
            "`{field}` is {ms} ms; at most {} s",
            max.as_secs()
        )));
    }
    Ok(ms)
}

fn duration_pb(ms: i64) -> Option<prost_types::Duration> {
    (ms > 0).then(|| prost_types::Duration {
        seconds: ms / 1000,
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    })
}

/// A rule's user-settable fields, checked.
struct Checked {
    name: String,
    selector: pb::rule::Selector,
    metric: String,
    comparison: pb::Comparison,
    threshold: f64,
    hold_ms: i64,
    cooldown_ms: i64,
    action: (String, Vec<u8>, Option<i64>),
    enabled: bool,
}

fn check(rule: &pb::Rule) -> ServiceResult<Checked> {
    if rule.name.is_empty()
        || rule.name.chars().count() > MAX_NAME
        || rule.name.chars().any(char::is_control)
    {
        return Err(ServiceError::invalid(format!(
            "`name` must be 1 to {MAX_NAME} characters without control characters"
        )));
    }
    let selector = match &rule.selector {
        None => {
            return Err(ServiceError::invalid(
                "a selector is required: `thing`, `channel` or `labels`",
            ));
        }
        Some(pb::rule::Selector::Thing(t)) => {
            required_id("thing", Some(t))?;
            pb::rule::Selector::Thing(t.clone())
        }
        Some(pb::rule::Selector::Channel(c)) => {
            required_id("channel", Some(c))?;
            pb::rule::Selector::Channel(c.clone())
        }
        Some(pb::rule::Selector::Labels(set)) => {
            if set.selectors.is_empty() || set.selectors.len() > MAX_SELECTORS {
                return Err(ServiceError::invalid(format!(
                    "`labels` must hold 1 to {MAX_SELECTORS} selectors; it holds {}",
                    set.selectors.len()
                )));
            }
            pb::rule::Selector::Labels(set.clone())
        }
    };
    if !valid_name(&rule.metric) {
        return Err(ServiceError::invalid(
            "`metric` must be 1 to 64 characters of [A-Za-z0-9._-]",
        ));
    }
    let comparison = match pb::Comparison::try_from(rule.comparison) {
        Ok(c) if c != pb::Comparison::Unspecified => c,
        _ => {
            return Err(ServiceError::invalid(format!(
                "`comparison` must be one of GT (1), GE, LT, LE, EQ, NE (6); got {}",
                rule.comparison
            )));
        }
    };
    if !rule.threshold.is_finite() {
        return Err(ServiceError::invalid("`threshold` must be a finite number"));
    }
    let hold_ms = duration_ms("hold", rule.hold.as_ref(), MAX_HOLD)?;
    let cooldown_ms = duration_ms("cooldown", rule.cooldown.as_ref(), MAX_COOLDOWN)?;
    let Some(action) = &rule.action else {
        return Err(ServiceError::invalid(
            "`action` is required: the command to send",
        ));
    };
    if !valid_name(&action.name) {
        return Err(ServiceError::invalid(
            "`action.name` must be 1 to 64 characters of [A-Za-z0-9._-]",
        ));
    }
    if action.payload.len() > MAX_PAYLOAD {
        return Err(ServiceError::invalid(format!(
            "`action.payload` is {} bytes; at most {MAX_PAYLOAD}",
            action.payload.len()
        )));
    }
    let ttl = match &action.ttl {
        None => None,
        Some(d) => {
            let ms = duration_ms("action.ttl", Some(d), Duration::from_secs(u64::MAX / 2000))?;
            if ms < 1000 {
                return Err(ServiceError::invalid(
                    "`action.ttl` must be at least one second",
                ));
            }
            Some(ms)
        }
    };
    Ok(Checked {
        name: rule.name.clone(),
        selector,
        metric: rule.metric.clone(),
        comparison,
        threshold: rule.threshold,
        hold_ms,
        cooldown_ms,
        action: (action.name.clone(), action.payload.to_vec(), ttl),
        enabled: rule.enabled,
    })
}

fn to_pb(r: rules::Model) -> pb::Rule {
    pb::Rule {
        id: Some(pb::RuleId {
            value: r.id.to_string(),
        }),
        owner: Some(pb::UserId {
            value: r.owner_id.to_string(),
        }),
        name: r.name,
        selector: decode_selector(&r.selector),
        metric: r.metric,
        comparison: r.comparison,
        threshold: r.threshold,
        hold: duration_pb(r.hold_ms),
        cooldown: duration_pb(r.cooldown_ms),
        action: Some(pb::CommandTemplate {
            name: r.action_name,
            payload: r.action_payload,
            ttl: r.action_ttl_ms.and_then(duration_pb),
        }),
        enabled: r.enabled,
        created: Some(timestamp_from_ms(r.created_ms)),
        updated: Some(timestamp_from_ms(r.updated_ms)),
    }
}

fn conflict(e: sea_orm::DbErr, name: &str) -> ServiceError {
    if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
        ServiceError::AlreadyExists(format!(
            "you already have a rule named {name:?}; choose another name"
        ))
    } else {
        e.into()
    }
}

impl RulesApi {
    /// RuleService over `rules`; an owner may hold at most `max_per_owner` rules.
    pub fn new(rules: Rules, max_per_owner: u64) -> Self {
        Self {
            rules,
            max_per_owner,
        }
    }

    /// Registers the service and its access rules with `server`.
    pub fn register(&self, server: &mut sipmba_runtime::Server) {
        server
            .add_service(pb::rule_service_server::RuleServiceServer::new(
                self.clone(),
            ))
            .access(access_policy());
    }

    /// The owner may read the telemetry of the selection and command it.
    async fn authorize_selection(
        &self,
        owner: Uuid,
        selector: &pb::rule::Selector,
    ) -> ServiceResult<()> {
        use pb::list_accessible_things_request::Selection;
        let objects = self.rules.objects();
        match selector {
            pb::rule::Selector::Thing(t) => {
                let thing = required_id("thing", Some(t))?;
                for permission in [
                    pb::ChannelPermission::ReadTelemetry,
                    pb::ChannelPermission::SendCommands,
                ] {
                    match objects.check(owner, thing, permission).await? {
                        Decision::Allowed | Decision::ThingInactive => {}
                        Decision::NotReachable => {
                            return Err(ServiceError::not_found(format!(
                                "thing {thing} not found"
                            )));
                        }
                        Decision::PermissionMissing => {
                            return Err(ServiceError::PermissionDenied(format!(
                                "the rule's owner may not {} thing {thing}: its grant lacks {}",
                                if permission == pb::ChannelPermission::ReadTelemetry {
                                    "read the telemetry of"
                                } else {
                                    "command"
                                },
                                permission.as_str_name()
                            )));
                        }
                    }
                }
                Ok(())
            }
            pb::rule::Selector::Channel(c) => {
                let channel = required_id("channel", Some(c))?;
                match objects
                    .accessible_things(
                        owner,
                        Selection::Channel(c.clone()),
                        &[pb::ChannelPermission::ReadTelemetry],
                    )
                    .await?
                {
                    Some(_) => Ok(()),
                    None => Err(ServiceError::not_found(format!(
                        "channel {channel} not found"
                    ))),
                }
            }
            // Labels select within the owner's reach; Objects checks the selectors.
            pb::rule::Selector::Labels(set) => objects
                .accessible_things(
                    owner,
                    Selection::Labels(set.clone()),
                    &[pb::ChannelPermission::ReadTelemetry],
                )
                .await
                .map(|_| ()),
        }
    }

    /// The rule `id` if `user` owns it.
    async fn owned(&self, user: Uuid, id: Uuid) -> ServiceResult<rules::Model> {
        rules::Entity::find_by_id(id)
            .one(self.rules.db())
            .await?
            .filter(|r| r.owner_id == user)
            .ok_or_else(|| ServiceError::not_found(format!("rule {id} not found")))
    }

    async fn create(&self, user: Uuid, r: &pb::CreateRuleRequest) -> ServiceResult<pb::Rule> {
        let Some(rule) = &r.rule else {
            return Err(ServiceError::invalid("`rule` is required"));
        };
        if rule.id.is_some() || rule.created.is_some() || rule.updated.is_some() {
            return Err(ServiceError::invalid(
                "`id`, `created` and `updated` are output only; leave them unset",
            ));
        }
        if let Some(owner) = optional_id("owner", rule.owner.as_ref())?
            && owner != user
        {
            return Err(ServiceError::PermissionDenied(
                "a rule is owned by the user who creates it: leave `owner` unset or set it to yourself"
                    .into(),
            ));
        }
        let c = check(rule)?;
        self.authorize_selection(user, &c.selector).await?;
        let db = self.rules.db();
        let count = rules::Entity::find()
            .filter(rules::Column::OwnerId.eq(user))
            .count(db)
            .await?;
        if count >= self.max_per_owner {
            return Err(ServiceError::ResourceExhausted {
                message: format!(
                    "you have {count} rules, the most one user may have; delete some first"
                ),
                retry_after: Duration::from_secs(60),
            });
        }
        let now = now_ms();
        let model = rules::ActiveModel {
            id: Set(Uuid::new_v4()),
            owner_id: Set(user),
            name: Set(c.name.clone()),
            selector: Set(encode_selector(&c.selector)),
            metric: Set(c.metric),
            comparison: Set(c.comparison as i32),
            threshold: Set(c.threshold),
            hold_ms: Set(c.hold_ms),
            cooldown_ms: Set(c.cooldown_ms),
            action_name: Set(c.action.0),
            action_payload: Set(c.action.1),
            action_ttl_ms: Set(c.action.2),
            enabled: Set(c.enabled),
            generation: Set(1),
            created_ms: Set(now),
            updated_ms: Set(now),
        };
        let row = model.insert(db).await.map_err(|e| conflict(e, &c.name))?;
        tracing::info!(rule = %row.id, owner = %user, "rule created");
        self.rules.changed().await;
        Ok(to_pb(row))
    }

    async fn update(&self, user: Uuid, r: &pb::UpdateRuleRequest) -> ServiceResult<pb::Rule> {
        let Some(patch) = &r.rule else {
            return Err(ServiceError::invalid("`rule` is required"));
        };
        let id = required_id("rule.id", patch.id.as_ref())?;
        let paths = r.update_mask.as_ref().map(|m| &m.paths[..]).unwrap_or(&[]);
        if paths.is_empty() {
            return Err(ServiceError::invalid(
                "`update_mask` must name at least one field",
            ));
        }
        let existing = self.owned(user, id).await?;
        let mut merged = to_pb(existing.clone());
        let mut condition_changed = false;
        for path in paths {
            match path.as_str() {
                "name" => merged.name = patch.name.clone(),
                "thing" | "channel" | "labels" => {
                    let selector = match (path.as_str(), &patch.selector) {
                        ("thing", Some(s @ pb::rule::Selector::Thing(_)))
                        | ("channel", Some(s @ pb::rule::Selector::Channel(_)))
                        | ("labels", Some(s @ pb::rule::Selector::Labels(_))) => s.clone(),
                        _ => {
                            return Err(ServiceError::invalid(format!(
                                "`update_mask` names `{path}`, but the rule does not set it"
                            )));
                        }
                    };
                    merged.selector = Some(selector);
                    condition_changed = true;
                }
                "metric" => {
                    merged.metric = patch.metric.clone();
                    condition_changed = true;
                }
                "comparison" => {
                    merged.comparison = patch.comparison;
                    condition_changed = true;
                }
                "threshold" => {
                    merged.threshold = patch.threshold;
                    condition_changed = true;
                }
                "hold" => merged.hold = patch.hold,
                "cooldown" => merged.cooldown = patch.cooldown,
                "action" => merged.action = patch.action.clone(),
                "enabled" => merged.enabled = patch.enabled,
                other => {
                    return Err(ServiceError::invalid(format!(
                        "`update_mask` path {other:?} is unknown or output only; use name, thing, channel, labels, metric, comparison, threshold, hold, cooldown, action or enabled"
                    )));
                }
            }
        }
        let c = check(&merged)?;
        if decode_selector(&existing.selector).as_ref() != Some(&c.selector) {
            self.authorize_selection(user, &c.selector).await?;
        }
        let generation = existing.generation + i64::from(condition_changed);
        let mut model: rules::ActiveModel = existing.into();
        model.name = Set(c.name.clone());
        model.selector = Set(encode_selector(&c.selector));
        model.metric = Set(c.metric);
        model.comparison = Set(c.comparison as i32);
        model.threshold = Set(c.threshold);
        model.hold_ms = Set(c.hold_ms);
        model.cooldown_ms = Set(c.cooldown_ms);
        model.action_name = Set(c.action.0);
        model.action_payload = Set(c.action.1);
        model.action_ttl_ms = Set(c.action.2);
        model.enabled = Set(c.enabled);
        model.generation = Set(generation);
        model.updated_ms = Set(now_ms());
        let row = model
            .update(self.rules.db())
            .await
            .map_err(|e| conflict(e, &c.name))?;
        self.rules.changed().await;
        Ok(to_pb(row))
    }

    async fn delete(&self, user: Uuid, id: Uuid) -> ServiceResult<()> {
        let rule = self.owned(user, id).await?;
        let db = self.rules.db();
        rules::Entity::delete_by_id(rule.id).exec(db).await?;
        // Evaluation skips states and firings of rules that no longer exist.
        firings::Entity::delete_many()
            .filter(firings::Column::RuleId.eq(rule.id))
            .exec(db)
            .await?;
        states::Entity::delete_many()
            .filter(states::Column::RuleId.eq(rule.id))
            .exec(db)
            .await?;
        tracing::info!(rule = %id, "rule deleted");
        self.rules.changed().await;
        Ok(())
    }

    async fn list(
        &self,
        user: Uuid,
        r: &pb::ListRulesRequest,
    ) -> ServiceResult<pb::ListRulesResponse> {
        let owner = optional_id("owner", r.owner.as_ref())?.unwrap_or(user);
        if owner != user {
            return Err(ServiceError::not_found(format!("user {owner} not found")));
        }
        let page = Page::decode(r.page.as_ref(), &format!("rules/{owner}"))?;
        let db = self.rules.db();
        let mut query = rules::Entity::find().filter(rules::Column::OwnerId.eq(owner));
        if let Some(after) = page.after {
            let Some(last) = rules::Entity::find_by_id(after).one(db).await? else {
                return Err(ServiceError::invalid(
                    "the rule this page token continues after was deleted; list from the first page",
                ));
            };
            query = query.filter(rules::Column::Name.gt(last.name));
        }
        let mut rows = query
            .order_by_asc(rules::Column::Name)
            .limit(page.fetch_limit())
            .all(db)
            .await?;
        let next_page_token = page.finish(&mut rows, |r| r.id);
        Ok(pb::ListRulesResponse {
            rules: rows.into_iter().map(to_pb).collect(),
            next_page_token,
        })
    }

    async fn list_firings(
        &self,
        user: Uuid,
        r: &pb::ListFiringsRequest,
    ) -> ServiceResult<pb::ListFiringsResponse> {
        let id = required_id("rule", r.rule.as_ref())?;
        let rule = self.owned(user, id).await?;
        let page = Page::decode(r.page.as_ref(), &format!("firings/{id}"))?;
        let db = self.rules.db();
        let mut query = firings::Entity::find().filter(firings::Column::RuleId.eq(rule.id));
        if let Some(after) = page.after {
            let Some(last) = firings::Entity::find_by_id(after).one(db).await? else {
                return Err(ServiceError::invalid(
                    "this page token is not from a listing of this rule's firings",
                ));
            };
            // Before (fired_ms, seq, id) of the last one listed.
            let same_ms =
                || sea_orm::Condition::all().add(firings::Column::FiredMs.eq(last.fired_ms));
            query = query.filter(
                sea_orm::Condition::any()
                    .add(firings::Column::FiredMs.lt(last.fired_ms))
                    .add(same_ms().add(firings::Column::Seq.lt(last.seq)))
                    .add(
                        same_ms()
                            .add(firings::Column::Seq.eq(last.seq))
                            .add(firings::Column::Id.lt(last.id)),
                    ),
            );
        }
        // Firings of one batch share their time; within it, the later reading is newer.
        let mut rows = query
            .order_by_desc(firings::Column::FiredMs)
            .order_by_desc(firings::Column::Seq)
            .order_by_desc(firings::Column::Id)
            .limit(page.fetch_limit())
            .all(db)
            .await?;
        let next_page_token = page.finish(&mut rows, |f| f.id);
        Ok(pb::ListFiringsResponse {
            firings: rows
                .into_iter()
                .map(|f| pb::RuleFiring {
                    rule: Some(pb::RuleId {
                        value: f.rule_id.to_string(),
                    }),
                    thing: Some(pb::ThingId {
                        value: f.thing_id.to_string(),
                    }),
                    value: f.value,
                    fired_at: Some(timestamp_from_ms(f.fired_ms)),
                    command: f.command_id.map(|c| pb::CommandId {
                        value: c.to_string(),
                    }),
                    crossed_at: Some(timestamp_from_ms(f.crossed_ms)),
                    seq: f.seq.try_into().unwrap_or(0),
                    detail: match f.status.as_str() {
                        PENDING => "the command is being sent".into(),
                        REFUSED => f.detail,
                        _ => String::new(),
                    },
                })
                .collect(),
            next_page_token,
        })
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl RuleService for RulesApi {
    async fn create_rule(&self, req: Request<pb::CreateRuleRequest>) -> Reply<pb::Rule> {
        let user = user_of(&req)?;
        Ok(Response::new(self.create(user, req.get_ref()).await?))
    }

    async fn get_rule(&self, req: Request<pb::GetRuleRequest>) -> Reply<pb::Rule> {
        let user = user_of(&req)?;
        let id = required_id("id", req.get_ref().id.as_ref())?;
        Ok(Response::new(to_pb(self.owned(user, id).await?)))
    }

    async fn list_rules(&self, req: Request<pb::ListRulesRequest>) -> Reply<pb::ListRulesResponse> {
        let user = user_of(&req)?;
        Ok(Response::new(self.list(user, req.get_ref()).await?))
    }

    async fn update_rule(&self, req: Request<pb::UpdateRuleRequest>) -> Reply<pb::Rule> {
        let user = user_of(&req)?;
        Ok(Response::new(self.update(user, req.get_ref()).await?))
    }

    async fn delete_rule(
        &self,
        req: Request<pb::DeleteRuleRequest>,
    ) -> Reply<pb::DeleteRuleResponse> {
        let user = user_of(&req)?;
        let id = required_id("id", req.get_ref().id.as_ref())?;
        self.delete(user, id).await?;
        Ok(Response::new(pb::DeleteRuleResponse {}))
    }

    async fn list_firings(
        &self,
        req: Request<pb::ListFiringsRequest>,
    ) -> Reply<pb::ListFiringsResponse> {
        let user = user_of(&req)?;
        Ok(Response::new(self.list_firings(user, req.get_ref()).await?))
    }
}
