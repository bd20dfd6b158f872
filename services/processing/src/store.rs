//! Queries over stored telemetry: offsets, latest values, points and buckets of history,
//! presence. What is stored, and how, is `consume`'s.

use std::collections::HashMap;

use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, sea_query::Expr};
use sea_orm_migration::prelude::*;
use sipmba_runtime::ServiceResult;
use uuid::Uuid;

use crate::{
    entity::{latest, metrics, offsets, presence, readings, rollups},
    rollup::{Retention, Source, plan},
};

/// Aggregates of one history bucket (over numbers and flags; `count` over every value).
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// Start of the bucket (ms).
    pub start_ms: i64,
    /// Mean.
    pub avg: Option<f64>,
    /// Smallest.
    pub min: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
    /// Sum.
    pub sum: Option<f64>,
    /// Values.
    pub count: u64,
}

/// The start of the bucket of `width` ms (> 0) holding `ms`: buckets are aligned to the epoch, and
/// a time before it falls in the bucket that starts at or before it (floor, not truncation
/// toward zero). [`Store::buckets`] groups by the same arithmetic in SQL.
pub fn bucket_start(ms: i64, width: i64) -> i64 {
    ms.saturating_sub(ms.rem_euclid(Ord::max(width, 1)))
}

/// A bucket as both the raw and the rollup query select it.
#[derive(sea_orm::FromQueryResult)]
struct BucketRow {
    start_ms: i64,
    count: i64,
    numbers: i64,
    sum: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
}

/// The first `limit` buckets of `query` (selecting [`BucketRow`]'s columns) grouped by `bucket`,
/// in order; the average is the sum over the numbers.
async fn grouped<E: EntityTrait>(
    db: &DatabaseConnection,
    query: sea_orm::Select<E>,
    bucket: Expr,
    limit: u64,
) -> ServiceResult<Vec<Bucket>> {
    use sea_orm::{QueryOrder, QuerySelect};
    let rows = query
        .group_by(bucket.clone())
        .order_by(bucket, sea_orm::Order::Asc)
        .limit(limit)
        .into_model::<BucketRow>()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| Bucket {
            start_ms: r.start_ms,
            avg: r
                .sum
                .filter(|_| r.numbers > 0)
                .map(|s| s / r.numbers as f64),
            min: r.min,
            max: r.max,
            sum: r.sum,
            count: r.count.try_into().unwrap_or(0),
        })
        .collect())
}

/// [`bucket_start`] of `column` (ms) in SQL: PostgreSQL and SQLite both truncate `/` and `%`
/// toward zero, so the remainder is made non-negative first. The width is an integer literal
/// (not a bind parameter), so that PostgreSQL sees the grouped expression and the selected one as
/// the same.
pub(crate) fn bucket_sql(column: &str, width: i64) -> String {
    let width = Ord::max(width, 1);
    format!("({column} - (({column} % {width}) + {width}) % {width})")
}

/// Reads and writes stored telemetry.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) db: DatabaseConnection,
    retention: Retention,
}

impl Store {
    /// A store on a migrated database, with the default [`Retention`].
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            retention: Retention::default(),
        }
    }

    /// The same with `retention`: which data history queries read for which times.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The connection.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Where to resume reading `topic`/`partition`.
    pub async fn offset(&self, topic: &str, partition: i32) -> ServiceResult<Option<i64>> {
        Ok(offsets::Entity::find_by_id((topic.to_owned(), partition))
            .one(&self.db)
            .await?
            .map(|o| o.next_offset))
    }

    /// The latest values of `things` (only `names`, unless empty).
    pub async fn latest(
        &self,
        things: &[Uuid],
        names: &[String],
    ) -> ServiceResult<Vec<latest::Model>> {
        let mut query =
            latest::Entity::find().filter(latest::Column::ThingId.is_in(things.to_vec()));
        if !names.is_empty() {
            query = query.filter(latest::Column::Name.is_in(names.to_vec()));
        }
        Ok(query.all(&self.db).await?)
    }

    /// Raw values of one metric in `[start, end)`, oldest first, after `after` (device ms, seq).
    pub async fn points(
        &self,
        thing: Uuid,
        name: &str,
        (start, end): (i64, i64),
        after: Option<(i64, i64)>,
        limit: u64,
    ) -> ServiceResult<Vec<metrics::Model>> {
        use sea_orm::{QueryOrder, QuerySelect};
        let mut query = metrics::Entity::find()
            .filter(metrics::Column::ThingId.eq(thing))
            .filter(metrics::Column::Name.eq(name))
            .filter(metrics::Column::DeviceMs.gte(start))
            .filter(metrics::Column::DeviceMs.lt(end));
        if let Some((ms, seq)) = after {
            query = query.filter(
                sea_orm::Condition::any()
                    .add(metrics::Column::DeviceMs.gt(ms))
                    .add(
                        sea_orm::Condition::all()
                            .add(metrics::Column::DeviceMs.eq(ms))
                            .add(metrics::Column::Seq.gt(seq)),
                    ),
            );
        }
        Ok(query
            .order_by_asc(metrics::Column::DeviceMs)
            .order_by_asc(metrics::Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// Aggregates of one metric per bucket of `width` ms in `[start, end)`, oldest first, for
    /// buckets starting after `after`, at most `limit`: each part of the range read from the
    /// finest data kept for it at `now` ([`plan`]). Where rollups answer, the range is taken in
    /// their whole minutes or hours.
    #[allow(clippy::too_many_arguments)]
    pub async fn buckets(
        &self,
        thing: Uuid,
        name: &str,
        range: (i64, i64),
        width: i64,
        after: Option<i64>,
        limit: u64,
        now: i64,
    ) -> ServiceResult<Vec<Bucket>> {
        let mut buckets = Vec::new();
        for (source, part) in plan(range, width, now, &self.retention) {
            let left = limit.saturating_sub(buckets.len() as u64);
            if left == 0 {
                break;
            }
            let found = match source {
                Source::Raw => {
                    self.raw_buckets(thing, name, part, width, after, left)
                        .await?
                }
                Source::Rollup(grid) => {
                    self.rollup_buckets(thing, name, grid, part, width, after, left)
                        .await?
                }
            };
            buckets.extend(found);
        }
        Ok(buckets)
    }

    /// [`Store::buckets`] from the rollups of width `grid` (which divides `width`).
    #[allow(clippy::too_many_arguments)]
    async fn rollup_buckets(
        &self,
        thing: Uuid,
        name: &str,
        grid: i64,
        (start, end): (i64, i64),
        width: i64,
        after: Option<i64>,
        limit: u64,
    ) -> ServiceResult<Vec<Bucket>> {
        use sea_orm::QuerySelect;
        let bucket = Expr::cust(bucket_sql("start_ms", width));
        let mut query = rollups::Entity::find()
            .select_only()
            .column_as(bucket.clone(), "start_ms")
            .column_as(Expr::cust("CAST(SUM(\"count\") AS BIGINT)"), "count")
            .column_as(Expr::cust("CAST(SUM(numbers) AS BIGINT)"), "numbers")
            .column_as(Expr::col(rollups::Column::Sum).sum(), "sum")
            .column_as(Expr::col(rollups::Column::Min).min(), "min")
            .column_as(Expr::col(rollups::Column::Max).max(), "max")
            .filter(rollups::Column::ThingId.eq(thing))
            .filter(rollups::Column::Name.eq(name))
            .filter(rollups::Column::WidthMs.eq(grid))
            // The rollup holding `start` counts whole: a range is taken in whole minutes or hours.
            .filter(rollups::Column::StartMs.gte(bucket_start(start, grid)))
            .filter(rollups::Column::StartMs.lt(end));
        if let Some(after) = after {
            query = query.filter(rollups::Column::StartMs.gte(after.saturating_add(width)));
        }
        grouped(&self.db, query, bucket, limit).await
    }

    /// [`Store::buckets`] from the raw values.
    async fn raw_buckets(
        &self,
        thing: Uuid,
        name: &str,
        (start, end): (i64, i64),
        width: i64,
        after: Option<i64>,
        limit: u64,
    ) -> ServiceResult<Vec<Bucket>> {
        use sea_orm::QuerySelect;
        let bucket = Expr::cust(bucket_sql("device_ms", width));
        let mut query = metrics::Entity::find()
            .select_only()
            .column_as(bucket.clone(), "start_ms")
            .column_as(Expr::col(metrics::Column::Seq).count(), "count")
            .column_as(Expr::col(metrics::Column::Number).count(), "numbers")
            .column_as(Expr::col(metrics::Column::Number).sum(), "sum")
            .column_as(Expr::col(metrics::Column::Number).min(), "min")
            .column_as(Expr::col(metrics::Column::Number).max(), "max")
            .filter(metrics::Column::ThingId.eq(thing))
            .filter(metrics::Column::Name.eq(name))
            .filter(metrics::Column::DeviceMs.gte(start))
            .filter(metrics::Column::DeviceMs.lt(end));
        if let Some(after) = after {
            // The bucket after `after` starts at `after + width`.
            query = query.filter(metrics::Column::DeviceMs.gte(after.saturating_add(width)));
        }
        grouped(&self.db, query, bucket, limit).await
    }

    /// When each of `things` was last heard from (ms), for those ever heard from.
    pub async fn presence(&self, things: &[Uuid]) -> ServiceResult<HashMap<Uuid, i64>> {
        Ok(presence::Entity::find()
            .filter(presence::Column::ThingId.is_in(things.to_vec()))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|p| (p.thing_id, p.last_seen_ms))
            .collect())
    }

    /// The highest stored seq of `thing` (0 when none).
    pub async fn last_seq(&self, thing: Uuid) -> ServiceResult<u64> {
        use sea_orm::{QueryOrder, QuerySelect};
        let row = readings::Entity::find()
            .filter(readings::Column::ThingId.eq(thing))
            .order_by_desc(readings::Column::Seq)
            .limit(1)
            .one(&self.db)
            .await?;
        Ok(row.map_or(0, |r| r.seq.try_into().unwrap_or(0)))
    }

    /// How many readings of `thing` are stored.
    pub async fn count(&self, thing: Uuid) -> ServiceResult<u64> {
        use sea_orm::PaginatorTrait;
        Ok(readings::Entity::find()
            .filter(readings::Column::ThingId.eq(thing))
            .count(&self.db)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::bucket_start;

    proptest! {
        /// Every time falls in exactly one bucket, which starts on a multiple of the width at or
        /// before it, before the epoch too.
        #[test]
        fn a_bucket_holds_its_time_and_starts_on_the_grid(
            ms in -1_000_000_000_000_000i64..1_000_000_000_000_000,
            width in 1i64..1_000_000_000,
        ) {
            let start = bucket_start(ms, width);
            prop_assert!(start <= ms && ms < start + width);
            prop_assert_eq!(start.rem_euclid(width), 0);
            prop_assert_eq!(bucket_start(start, width), start);
            prop_assert_eq!(bucket_start(start + width, width), start + width);
        }
    }

    #[test]
    fn times_before_the_epoch_fall_in_the_bucket_before_it() {
        assert_eq!(bucket_start(-1, 1000), -1000);
        assert_eq!(bucket_start(-1000, 1000), -1000);
        assert_eq!(bucket_start(-1001, 1000), -2000);
        assert_eq!(bucket_start(999, 1000), 0);
        assert_eq!(bucket_start(i64::MIN, 1000), i64::MIN);
    }
}
