//! Follows the Objects change feed: a disabled user subtree, a disabled or deleted thing, and
//! their tokens are revoked at once. The position is kept in `sso_cursors`, so a restart resumes
//! where it stopped; replaying an event is harmless (a revocation names the time of the change).

use std::time::Duration;

use sea_orm::{ActiveValue::Set, EntityTrait};
use sipmba_auth::Kind;
use sipmba_proto::v1 as pb;
use sipmba_runtime::{ServiceError, ServiceResult, Shutdown, ids::timestamp_to_ms};
use uuid::Uuid;

use crate::{
    Sso,
    entity::{clients, cursors},
};

const FEED: &str = "objects";

impl Sso {
    /// Follows the Objects change feed until `shutdown`, reconnecting after failures.
    pub fn follow_objects(&self, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
        let sso = self.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(200);
            loop {
                let run = sso.follow_once();
                tokio::select! {
                    result = run => {
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "objects change feed interrupted; reconnecting");
                        } else {
                            pause = Duration::from_millis(200);
                        }
                    }
                    () = shutdown.clone().wait() => return,
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.clone().wait() => return,
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        })
    }

    /// Follows from the kept position until the stream ends. A position Objects no longer
    /// holds (its events were pruned before this sso read them) is dropped, so that the next
    /// try starts from the oldest kept event: the events it missed can only have revoked tokens
    /// that expired since, while `objects.event_retention_secs` exceeds the longest access-token
    /// lifetime (the configuration refuses less).
    async fn follow_once(&self) -> ServiceResult<()> {
        match self.follow_from_cursor().await {
            Err(ServiceError::FailedPrecondition(reason)) => {
                tracing::warn!(
                    %reason,
                    "objects pruned change events this sso had not read; following again from the oldest kept event"
                );
                self.set_cursor(FEED, 0).await
            }
            other => other,
        }
    }

    async fn follow_from_cursor(&self) -> ServiceResult<()> {
        let after = u64::try_from(self.cursor(FEED).await?).unwrap_or(0);
        let mut stream = self.inner.objects.watch_events(after).await?;
        while let Some(event) = stream.message().await.map_err(|e| {
            let message = e.message().to_owned();
            if e.code() == tonic::Code::FailedPrecondition {
                ServiceError::FailedPrecondition(message)
            } else {
                ServiceError::Unavailable(message)
            }
        })? {
            self.apply(&event).await?;
            self.set_cursor(FEED, i64::try_from(event.sequence).unwrap_or(i64::MAX))
                .await?;
        }
        Ok(())
    }

    async fn apply(&self, event: &pb::ObjectEvent) -> ServiceResult<()> {
        let at = event
            .time
            .as_ref()
            .map(|t| timestamp_to_ms("time", t))
            .transpose()?
            .unwrap_or_else(sipmba_runtime::ids::now_ms);
        let ids = |values: Vec<&str>| -> Vec<Uuid> {
            values
                .into_iter()
                .filter_map(|v| Uuid::parse_str(v).ok())
                .collect()
        };
        let users = ids(event.users.iter().map(|u| u.value.as_str()).collect());
        let things = ids(event.things.iter().map(|t| t.value.as_str()).collect());
        match pb::ObjectEventKind::try_from(event.kind) {
            Ok(pb::ObjectEventKind::UserDisabled) | Ok(pb::ObjectEventKind::ThingDisabled) => {
                for user in &users {
                    self.revoke_subject(*user, Some(Kind::User), at).await?;
                }
                for thing in &things {
                    self.revoke_subject(*thing, Some(Kind::Thing), at).await?;
                }
                tracing::info!(
                    sequence = event.sequence,
                    users = users.len(),
                    things = things.len(),
                    "revoked the tokens of disabled principals"
                );
            }
            Ok(pb::ObjectEventKind::ThingDeleted) => {
                for thing in &things {
                    self.revoke_subject(*thing, Some(Kind::Thing), at).await?;
                    clients::Entity::delete_by_id(thing.to_string())
                        .exec(&self.inner.db)
                        .await?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl Sso {
    /// The position of a feed (0 when never moved).
    pub(crate) async fn cursor(&self, feed: &str) -> ServiceResult<i64> {
        Ok(cursors::Entity::find_by_id(feed.to_owned())
            .one(&self.inner.db)
            .await?
            .map_or(0, |c| c.position))
    }

    /// Moves a feed's position.
    pub(crate) async fn set_cursor(&self, feed: &str, position: i64) -> ServiceResult<()> {
        cursors::Entity::delete_by_id(feed.to_owned())
            .exec(&self.inner.db)
            .await?;
        cursors::Entity::insert(cursors::ActiveModel {
            feed: Set(feed.to_owned()),
            position: Set(position),
        })
        .exec_without_returning(&self.inner.db)
        .await?;
        Ok(())
    }
}
