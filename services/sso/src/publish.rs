//! Publishes recorded revocations on `sipmba.revocations`. The `sso_revocations` table is the
//! outbox: a revocation is durable once recorded, and published (at least once) as soon as the
//! broker takes it, also after an outage or a restart.

use std::time::Duration;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use sipmba_proto::v1 as pb;
use sipmba_queue::revocations::RevocationPublisher;
use sipmba_runtime::{ServiceError, ServiceResult, Shutdown, ids::timestamp_from_ms};

use crate::{Sso, entity::revocations};

const FEED: &str = "revocations-published";

impl Sso {
    /// Publishes revocations until `shutdown`.
    pub fn publish_revocations(
        &self,
        publisher: RevocationPublisher,
        shutdown: Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        let sso = self.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                let woken = sso.inner.revoked.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                match sso.publish_pending(&publisher).await {
                    Ok(()) => pause = Duration::from_millis(100),
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "cannot publish revocations yet");
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            () = shutdown.clone().wait() => return,
                        }
                        pause = (pause * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
                tokio::select! {
                    () = woken => {}
                    // Other replicas' revocations reach the outbox too.
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.clone().wait() => return,
                }
            }
        })
    }

    async fn publish_pending(&self, publisher: &RevocationPublisher) -> ServiceResult<()> {
        loop {
            let after = self.cursor(FEED).await?;
            let rows = revocations::Entity::find()
                .filter(revocations::Column::Seq.gt(after))
                .order_by_asc(revocations::Column::Seq)
                .limit(200)
                .all(&self.inner.db)
                .await?;
            if rows.is_empty() {
                return Ok(());
            }
            for row in rows {
                let (key, record) = record(&row);
                publisher
                    .publish(&key, &record)
                    .await
                    .map_err(|e| ServiceError::Unavailable(e.to_string()))?;
                self.set_cursor(FEED, row.seq).await?;
            }
        }
    }
}

fn record(row: &revocations::Model) -> (String, pb::Revocation) {
    let target = match (&row.jti, row.subject, row.not_before_ms) {
        (Some(jti), _, _) => pb::revocation::Target::Jti(jti.clone()),
        (None, Some(subject), nbf) => pb::revocation::Target::Subject(pb::SubjectNotBefore {
            kind: i32::from(row.kind),
            subject: subject.to_string(),
            // The table keeps the exclusive cut-off; the record names the last revoked second.
            not_before: Some(timestamp_from_ms(nbf.unwrap_or(0) - 1000)),
        }),
        (None, None, _) => pb::revocation::Target::Jti(String::new()),
    };
    let key = row
        .subject
        .map(|s| s.to_string())
        .or_else(|| row.jti.clone())
        .unwrap_or_default();
    (
        key,
        pb::Revocation {
            target: Some(target),
            expires: Some(timestamp_from_ms(row.expires_ms)),
            revoked_at: None,
        },
    )
}
