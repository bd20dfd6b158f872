//! The change events other services follow (revocations, deletions), and their signal.

use super::*;

impl Store {
    pub(super) async fn record_event(
        &self,
        txn: &DatabaseTransaction,
        kind: pb::ObjectEventKind,
        subject: Uuid,
        users: &[Uuid],
        things: &[Uuid],
        caller: &Caller,
    ) -> ServiceResult<u64> {
        let encode = |ids: &[Uuid]| {
            serde_json::to_string(&ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
                .unwrap_or_else(|_| "[]".into())
        };
        let model = object_events::ActiveModel {
            kind: Set(kind as i32),
            subject: Set(subject.to_string()),
            users: Set(encode(users)),
            things: Set(encode(things)),
            actor: Set(caller.actor()),
            created_ms: Set(now_ms()),
            ..Default::default()
        };
        let seq = object_events::Entity::insert(model)
            .exec(txn)
            .await?
            .last_insert_id;
        Ok(u64::try_from(seq).unwrap_or(0))
    }

    /// Events after `after`, oldest first, at most `limit`.
    pub async fn events_after(
        &self,
        after: u64,
        limit: u64,
    ) -> ServiceResult<Vec<pb::ObjectEvent>> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = object_events::Entity::find()
            .filter(object_events::Column::Seq.gt(after))
            .order_by_asc(object_events::Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await?;
        let decode = |text: &str| -> Vec<String> { serde_json::from_str(text).unwrap_or_default() };
        Ok(rows
            .into_iter()
            .map(|e| pb::ObjectEvent {
                sequence: u64::try_from(e.seq).unwrap_or(0),
                kind: e.kind,
                subject: e.subject,
                users: decode(&e.users)
                    .into_iter()
                    .map(|value| pb::UserId { value })
                    .collect(),
                things: decode(&e.things)
                    .into_iter()
                    .map(|value| pb::ThingId { value })
                    .collect(),
                time: Some(timestamp_from_ms(e.created_ms)),
                actor: e.actor,
            })
            .collect())
    }

    /// Notified when this process commits an event (other replicas are seen by polling).
    pub fn event_signal(&self) -> std::sync::Arc<Notify> {
        self.events.clone()
    }
}
