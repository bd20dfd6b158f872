//! Bounded pruning of the tables that only grow: each service names the rows that can go
//! ([`Rule`]s: past a retention, or past their own expiry), and a [`Pruner`] deletes them a batch
//! at a time — each batch one short statement of its own, so what writes the same tables
//! meanwhile (ingestion, token issue) waits for one batch at most, never for the whole backlog.
//! PostgreSQL and SQLite alike.

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};

use crate::{Shutdown, clock::Clock};

/// Rows deleted per statement unless [`Pruner::with_batch`] says otherwise.
pub const BATCH: u64 = 1000;

type Due = dyn Fn(i64) -> String + Send + Sync;

/// The rows of one table that can be deleted at a time.
#[derive(Clone)]
pub struct Rule {
    table: &'static str,
    key: &'static str,
    due: Arc<Due>,
    order: Option<&'static str>,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// Milliseconds of `d`, saturating.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Rule {
    /// Rows of `table` (primary key `key`: one column, or several separated by commas) for which
    /// the SQL condition `due(now_ms)` holds. The condition is built by the service from numbers
    /// it computed, never from input.
    pub fn new(
        table: &'static str,
        key: &'static str,
        due: impl Fn(i64) -> String + Send + Sync + 'static,
    ) -> Self {
        Self {
            table,
            key,
            due: Arc::new(due),
            order: None,
        }
    }

    /// The same, each batch the due rows first in `order` (an `ORDER BY` list): what is deleted
    /// is then always a prefix in that order, even between the batches of one pass.
    pub fn ordered_by(mut self, order: &'static str) -> Self {
        self.order = Some(order);
        self
    }

    /// Rows whose `column` (ms since the epoch) is more than `keep` before now.
    pub fn older_than(
        table: &'static str,
        key: &'static str,
        column: &'static str,
        keep: Duration,
    ) -> Self {
        let keep = millis(keep);
        Self::new(table, key, move |now| {
            format!("{column} < {}", now.saturating_sub(keep))
        })
    }

    /// The table.
    pub fn table(&self) -> &'static str {
        self.table
    }

    /// One batch: the statement deleting at most `limit` due rows at `now`.
    fn statement(&self, now: i64, limit: u64) -> String {
        let (table, key) = (self.table, self.key);
        let order = self
            .order
            .map(|order| format!(" ORDER BY {order}"))
            .unwrap_or_default();
        format!(
            "DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE {}{order} LIMIT {limit})",
            (self.due)(now)
        )
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: String,
}

/// Deletes the due rows of its [`Rule`]s, a batch at a time.
#[derive(Clone)]
pub struct Pruner {
    db: DatabaseConnection,
    rules: Vec<Rule>,
    batch: u64,
    clock: Clock,
    pruned: Family<TableLabel, Counter>,
}

impl std::fmt::Debug for Pruner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pruner")
            .field("rules", &self.rules)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl Pruner {
    /// A pruner of `rules` on `db`, on the system clock, [`BATCH`] rows per statement.
    pub fn new(db: DatabaseConnection, rules: Vec<Rule>) -> Self {
        let pruned = Family::<TableLabel, Counter>::default();
        for rule in &rules {
            // Present from the start, at 0: a rate over it is defined before the first prune.
            let _ = pruned.get_or_create(&TableLabel {
                table: rule.table.to_owned(),
            });
        }
        Self {
            db,
            rules,
            batch: BATCH,
            clock: Clock::system(),
            pruned,
        }
    }

    /// The same on `clock` (tests move it by hand).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// At most `batch` rows per statement.
    pub fn with_batch(mut self, batch: u64) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Registers `sipmba_pruned_rows_total{table}`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "pruned_rows",
            "Rows deleted by pruning, by table",
            self.pruned.clone(),
        );
    }

    /// One pass: every rule's due rows at the clock's now, a batch at a time until none is
    /// left; the rows deleted per table, in the rules' order.
    pub async fn run_once(&self) -> Result<Vec<(&'static str, u64)>, DbErr> {
        let now = self.clock.now_ms();
        let mut deleted = Vec::with_capacity(self.rules.len());
        for rule in &self.rules {
            let mut total = 0;
            loop {
                let n = self
                    .db
                    .execute_unprepared(&rule.statement(now, self.batch))
                    .await?
                    .rows_affected();
                total += n;
                self.pruned
                    .get_or_create(&TableLabel {
                        table: rule.table.to_owned(),
                    })
                    .inc_by(n);
                if n < self.batch {
                    break;
                }
                // Let the writers of the table in between batches.
                tokio::task::yield_now().await;
            }
            deleted.push((rule.table, total));
        }
        Ok(deleted)
    }

    /// Runs a pass now and then every `every` until `shutdown`; a failed pass is logged and the
    /// next one tries again.
    pub fn spawn(self, every: Duration, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.run_once().await {
                    Ok(deleted) => {
                        for (table, n) in deleted.into_iter().filter(|(_, n)| *n > 0) {
                            tracing::info!(table, rows = n, "pruned");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "pruning failed; retrying at the next pass")
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = shutdown.clone().wait() => return,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_deletes_by_key_what_the_rule_names() {
        let rule = Rule::older_than("t", "a, b", "at_ms", Duration::from_secs(10));
        assert_eq!(
            rule.statement(60_000, 5),
            "DELETE FROM t WHERE (a, b) IN (SELECT a, b FROM t WHERE at_ms < 50000 LIMIT 5)"
        );
        assert_eq!(
            rule.ordered_by("a").statement(60_000, 5),
            "DELETE FROM t WHERE (a, b) IN (SELECT a, b FROM t WHERE at_ms < 50000 ORDER BY a LIMIT 5)"
        );
    }
}
