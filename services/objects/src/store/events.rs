//! The change events other services follow (revocations, deletions), and their signal.

use super::*;

/// The PostgreSQL advisory lock every transaction that records an event holds from its insert
/// to its commit (the tree's is `TREE_LOCK`).
const EVENT_LOCK: i64 = 74_000_102;

impl Store {
    /// Records an event in `txn`, which must commit (or roll back) right after: it is the
    /// transaction's last write. The insert waits for [`EVENT_LOCK`]
    /// (`sipmba_runtime::db::advisory_lock`), so that events commit in the order of their
    /// sequence numbers and sso, following them, never passes a disabled user's event.
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
        sipmba_runtime::db::advisory_lock(txn, EVENT_LOCK).await?;
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

    /// Events after `after`, oldest first, at most `limit`. A position older than the events
    /// kept (pruned past `objects.event_retention_secs`) is refused with `FailedPrecondition`:
    /// the follower may have missed events and starts again from 0, the oldest kept.
    pub async fn events_after(
        &self,
        after: u64,
        limit: u64,
    ) -> ServiceResult<Vec<pb::ObjectEvent>> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        // The event at the position itself comes too: while it is kept, nothing after it was
        // pruned (pruning takes the oldest first).
        let mut rows = object_events::Entity::find()
            .filter(object_events::Column::Seq.gte(after))
            .order_by_asc(object_events::Column::Seq)
            .limit(limit.saturating_add(1))
            .all(&self.db)
            .await?;
        if rows.first().is_some_and(|e| e.seq == after) {
            rows.remove(0);
        } else if after > 0 {
            self.position_kept(after).await?;
        }
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
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

    /// Refuses `after` when it is older than the oldest kept event (the newest is never pruned,
    /// so an empty feed has never had one).
    async fn position_kept(&self, after: i64) -> ServiceResult<()> {
        let oldest = object_events::Entity::find()
            .order_by_asc(object_events::Column::Seq)
            .one(&self.db)
            .await?;
        match oldest {
            Some(oldest) if after < oldest.seq => Err(ServiceError::FailedPrecondition(format!(
                "the change feed no longer holds position {after}: events before {} were pruned \
                 (objects.event_retention_secs); follow from 0 to start at the oldest kept event",
                oldest.seq
            ))),
            _ => Ok(()),
        }
    }

    /// Notified when this process commits an event (other replicas are seen by polling).
    pub fn event_signal(&self) -> std::sync::Arc<Notify> {
        self.events.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Two writers of events on PostgreSQL: the second waits for the first to commit, so a
    /// follower never sees a later event while an earlier one may still commit.
    #[tokio::test]
    async fn a_follower_never_passes_an_event_that_commits_later() {
        let db = sipmba_testkit::TestDb::postgres().await.unwrap();
        let conn = sipmba_runtime::db::connect(&db.url, 5).await.unwrap();
        crate::migrate(&conn).await.unwrap();
        let store = Store::new(conn);
        let caller = Caller::Admin {
            actor: "service:test".into(),
        };
        let kind = pb::ObjectEventKind::ThingDeleted;
        let seen = async || -> Vec<u64> {
            let events = store.events_after(0, 10).await.unwrap();
            events.iter().map(|e| e.sequence).collect()
        };
        let first = store.write(false).await.unwrap();
        let seq = store
            .record_event(&first, kind, Uuid::new_v4(), &[], &[], &caller)
            .await
            .unwrap();
        let second = tokio::spawn({
            let (store, caller) = (store.clone(), caller.clone());
            async move {
                let txn = store.write(false).await?;
                let seq = store
                    .record_event(&txn, kind, Uuid::new_v4(), &[], &[], &caller)
                    .await?;
                txn.commit().await?;
                ServiceResult::Ok(seq)
            }
        });
        // The second writer either waits for the lock or (without it) has committed.
        sipmba_testkit::waiting_for_lock_or(&store.db, EVENT_LOCK, || second.is_finished()).await;
        let before = seen().await;
        assert!(
            before.is_empty(),
            "a follower saw events {before:?} while event {seq} was still to commit"
        );
        first.commit().await.unwrap();
        let later = second.await.unwrap().unwrap();
        assert_eq!(seen().await, [seq, later]);
    }
}
