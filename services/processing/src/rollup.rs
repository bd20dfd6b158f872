//! Telemetry retention: raw values are kept for a time, their per-minute and per-hour rollups
//! (count, sum, min, max) longer. Rollups are added to at ingest, in the batch's transaction, from
//! the readings actually stored (a repeated `(thing, seq)` adds nothing), so they stay exact after
//! the raw values are pruned and for readings that arrive late. A history query of buckets is
//! answered from the finest data that covers each part of its range ([`plan`]).

use std::{collections::HashMap, time::Duration};

use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait, sea_query::OnConflict};
use sea_orm_migration::prelude::*;
use sipmba_runtime::ServiceResult;
use uuid::Uuid;

use crate::{entity::rollups, store::bucket_start};

/// Width of a minute rollup (ms).
pub const MINUTE: i64 = 60_000;
/// Width of an hour rollup (ms).
pub const HOUR: i64 = 3_600_000;

/// How long each kind of telemetry data is kept, by device time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Raw values (readings and their metrics).
    pub raw: Duration,
    /// Minute rollups.
    pub minutes: Duration,
    /// Hour rollups.
    pub hours: Duration,
}

impl Default for Retention {
    /// Raw values 30 days, minutes 90 days, hours 5 years.
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            raw: Duration::from_secs(30 * DAY),
            minutes: Duration::from_secs(90 * DAY),
            hours: Duration::from_secs(5 * 365 * DAY),
        }
    }
}

/// Milliseconds of `d`, saturating.
fn millis(d: Duration) -> i64 {
    <i64 as TryFrom<u128>>::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Where one part of a history query is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The raw values.
    Raw,
    /// The rollups of this width (ms).
    Rollup(i64),
}

/// The smallest multiple of `width` at or after `ms`.
fn ceil_to(ms: i64, width: i64) -> i64 {
    let start = bucket_start(ms, width);
    if start == ms {
        start
    } else {
        start.saturating_add(width)
    }
}

/// Which data answers buckets of `width` ms over `[start, end)` at `now`: oldest part first, the
/// parts adjoining and together the whole range. Each part is read from the finest data whose
/// grid divides `width` and that is still kept for it; parts meet on bucket boundaries, so no
/// bucket is read from two sources. Older than everything kept, the coarsest source that fits is
/// read (and holds what is left).
pub fn plan(
    (start, end): (i64, i64),
    width: i64,
    now: i64,
    retention: &Retention,
) -> Vec<(Source, (i64, i64))> {
    let width = Ord::max(width, 1);
    let mut sources = vec![(Source::Raw, now.saturating_sub(millis(retention.raw)))];
    for (grid, keep) in [(MINUTE, retention.minutes), (HOUR, retention.hours)] {
        if width % grid == 0 {
            sources.push((Source::Rollup(grid), now.saturating_sub(millis(keep))));
        }
    }
    let last = sources.len() - 1;
    let mut parts = Vec::new();
    let mut upper = end;
    for (i, (source, horizon)) in sources.into_iter().enumerate() {
        let lower = if i == last {
            start
        } else {
            Ord::max(start, ceil_to(horizon, width))
        };
        if lower < upper {
            parts.push((source, (lower, upper)));
            upper = lower;
        }
        if upper <= start {
            break;
        }
    }
    parts.reverse();
    parts
}

/// What one stored value adds to a rollup.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Delta {
    /// Values.
    pub count: i64,
    /// Numeric values (flags as 0/1).
    pub numbers: i64,
    /// Their sum.
    pub sum: Option<f64>,
    /// The smallest.
    pub min: Option<f64>,
    /// The largest.
    pub max: Option<f64>,
}

impl Delta {
    fn add(&mut self, number: Option<f64>) {
        self.count += 1;
        if let Some(n) = number {
            self.numbers += 1;
            self.sum = Some(self.sum.unwrap_or(0.0) + n);
            self.min = Some(self.min.map_or(n, |m| m.min(n)));
            self.max = Some(self.max.map_or(n, |m| m.max(n)));
        }
    }
}

/// The rollups of a batch, keyed by (thing, metric, width, start).
#[derive(Debug, Default)]
pub struct Deltas(HashMap<(Uuid, String, i64, i64), Delta>);

impl Deltas {
    /// Adds one stored value (`number`: none for text) at `device_ms`.
    pub fn add(&mut self, thing: Uuid, name: &str, device_ms: i64, number: Option<f64>) {
        for width in [MINUTE, HOUR] {
            self.0
                .entry((
                    thing,
                    name.to_owned(),
                    width,
                    bucket_start(device_ms, width),
                ))
                .or_default()
                .add(number);
        }
    }

    /// Adds them to the stored rollups (inside the batch's transaction).
    pub async fn store(self, db: &impl ConnectionTrait) -> ServiceResult<()> {
        let mut deltas: Vec<_> = self.0.into_iter().collect();
        // The same order in every transaction: two writers of the same rows do not deadlock.
        deltas.sort_by(|a, b| a.0.cmp(&b.0));
        let mut rows: Vec<rollups::ActiveModel> = deltas
            .into_iter()
            .map(|((thing, name, width, start), d)| rollups::ActiveModel {
                thing_id: Set(thing),
                name: Set(name),
                width_ms: Set(width),
                start_ms: Set(start),
                count: Set(d.count),
                numbers: Set(d.numbers),
                sum: Set(d.sum),
                min: Set(d.min),
                max: Set(d.max),
            })
            .collect();
        // A NULL (no number yet, or none added) never replaces a number; `x < NULL` is not true.
        let t = "processing_rollups";
        let merge = [
            (
                rollups::Column::Count,
                format!("{t}.\"count\" + excluded.\"count\""),
            ),
            (
                rollups::Column::Numbers,
                format!("{t}.numbers + excluded.numbers"),
            ),
            (
                rollups::Column::Sum,
                format!(
                    "CASE WHEN excluded.\"sum\" IS NULL THEN {t}.\"sum\" WHEN {t}.\"sum\" IS NULL \
                     THEN excluded.\"sum\" ELSE {t}.\"sum\" + excluded.\"sum\" END"
                ),
            ),
            (
                rollups::Column::Min,
                format!(
                    "CASE WHEN {t}.\"min\" IS NULL OR excluded.\"min\" < {t}.\"min\" \
                     THEN excluded.\"min\" ELSE {t}.\"min\" END"
                ),
            ),
            (
                rollups::Column::Max,
                format!(
                    "CASE WHEN {t}.\"max\" IS NULL OR excluded.\"max\" > {t}.\"max\" \
                     THEN excluded.\"max\" ELSE {t}.\"max\" END"
                ),
            ),
        ];
        while !rows.is_empty() {
            let chunk: Vec<_> = rows
                .drain(..rows.len().min(crate::consume::CHUNK))
                .collect();
            rollups::Entity::insert_many(chunk)
                .on_conflict(
                    OnConflict::columns([
                        rollups::Column::ThingId,
                        rollups::Column::Name,
                        rollups::Column::WidthMs,
                        rollups::Column::StartMs,
                    ])
                    .values(merge.iter().map(|(c, e)| (*c, Expr::cust(e.clone()))))
                    .to_owned(),
                )
                .exec_without_returning(db)
                .await?;
        }
        Ok(())
    }
}

/// The rows Processing prunes past `retention`: raw readings and metrics by device time, minute
/// and hour rollups once their bucket has ended that long ago.
pub fn prune_rules(retention: &Retention) -> Vec<sipmba_runtime::prune::Rule> {
    use sipmba_runtime::prune::Rule;
    let mut rules = vec![
        Rule::older_than(
            "processing_metrics",
            "thing_id, name, seq",
            "device_ms",
            retention.raw,
        ),
        Rule::older_than(
            "processing_readings",
            "thing_id, seq",
            "device_ms",
            retention.raw,
        ),
    ];
    for (width, keep) in [(MINUTE, retention.minutes), (HOUR, retention.hours)] {
        let keep = millis(keep);
        rules.push(Rule::new(
            "processing_rollups",
            "thing_id, name, width_ms, start_ms",
            move |now| {
                format!(
                    "width_ms = {width} AND start_ms < {}",
                    now.saturating_sub(keep).saturating_sub(width)
                )
            },
        ));
    }
    rules
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const DAY: i64 = 24 * HOUR;

    fn retention(raw_h: u64, minutes_h: u64, hours_h: u64) -> Retention {
        Retention {
            raw: Duration::from_secs(raw_h * 3600),
            minutes: Duration::from_secs(minutes_h * 3600),
            hours: Duration::from_secs(hours_h * 3600),
        }
    }

    #[test]
    fn a_recent_range_is_read_raw() {
        let now = 100 * DAY;
        let r = retention(24, 240, 2400);
        assert_eq!(
            plan((now - HOUR, now), HOUR, now, &r),
            vec![(Source::Raw, (now - HOUR, now))]
        );
    }

    #[test]
    fn an_old_range_is_read_from_minutes_then_hours_and_raw_at_the_end() {
        let now = 100 * DAY + 30 * MINUTE; // mid-hour
        let r = retention(24, 240, 2400);
        let start = now - 20 * DAY;
        let parts = plan((start, now), HOUR, now, &r);
        let raw_from = ceil_to(now - DAY, HOUR);
        let minutes_from = ceil_to(now - 10 * DAY, HOUR);
        assert_eq!(
            parts,
            vec![
                (Source::Rollup(HOUR), (start, minutes_from)),
                (Source::Rollup(MINUTE), (minutes_from, raw_from)),
                (Source::Raw, (raw_from, now)),
            ]
        );
    }

    #[test]
    fn a_width_off_the_minute_grid_is_read_raw_whatever_is_kept() {
        let now = 100 * DAY;
        let r = retention(1, 240, 2400);
        assert_eq!(
            plan((now - 10 * DAY, now), 90_000, now, &r),
            vec![(Source::Raw, (now - 10 * DAY, now))]
        );
        // Minutes but not hours divide 30 minutes.
        let parts = plan((now - 20 * DAY, now), 30 * MINUTE, now, &r);
        assert_eq!(parts[0].0, Source::Rollup(MINUTE));
        assert_eq!(parts.len(), 2);
    }

    #[test]
    fn a_value_counts_once_in_its_minute_and_its_hour() {
        let thing = Uuid::nil();
        let mut d = Deltas::default();
        d.add(thing, "t", 61_000, Some(2.0));
        d.add(thing, "t", 119_999, Some(-1.0));
        d.add(thing, "t", 120_000, None);
        let minute = d.0[&(thing, "t".into(), MINUTE, MINUTE)];
        assert_eq!(
            minute,
            Delta {
                count: 2,
                numbers: 2,
                sum: Some(1.0),
                min: Some(-1.0),
                max: Some(2.0)
            }
        );
        let text = d.0[&(thing, "t".into(), MINUTE, 2 * MINUTE)];
        assert_eq!((text.count, text.numbers, text.sum), (1, 0, None));
        let hour = d.0[&(thing, "t".into(), HOUR, 0)];
        assert_eq!((hour.count, hour.numbers), (3, 2));
    }

    proptest! {
        /// The parts tile the range: oldest first, adjoining, each non-empty, meeting on bucket
        /// boundaries, each read from a source whose grid divides the width; and a part is read
        /// raw only where raw values are kept.
        #[test]
        fn the_parts_tile_the_range(
            now in 0i64..1_000 * DAY,
            back in 1i64..400 * DAY,
            len in 1i64..400 * DAY,
            minutes in 1i64..4,
            raw_h in 1u64..2000, extra_m in 0u64..4000, extra_h in 0u64..8000,
        ) {
            let width = minutes * 30 * MINUTE;
            let r = retention(raw_h, raw_h + extra_m, raw_h + extra_m + extra_h);
            let start = now - back;
            let end = start + len;
            let parts = plan((start, end), width, now, &r);
            prop_assert!(!parts.is_empty());
            prop_assert_eq!(parts[0].1.0, start);
            prop_assert_eq!(parts[parts.len() - 1].1.1, end);
            for w in parts.windows(2) {
                prop_assert_eq!(w[0].1.1, w[1].1.0);
                prop_assert_eq!(bucket_start(w[1].1.0, width), w[1].1.0);
            }
            for (source, (lower, upper)) in &parts {
                prop_assert!(lower < upper);
                match source {
                    Source::Raw => prop_assert!(*lower >= now - millis(r.raw)),
                    Source::Rollup(grid) => prop_assert_eq!(width % grid, 0),
                }
            }
        }
    }
}
