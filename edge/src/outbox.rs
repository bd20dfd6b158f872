//! The on-disk outbox: every reading is committed here (redb: copy-on-write B-trees, checksummed
//! commits, so a power cut mid-write leaves the last committed state readable) before it is ever
//! sent, and deleted only once Collect has acknowledged its `seq`. It also remembers the outcome
//! of every command executed, so a command delivered twice runs once.

use std::path::Path;

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use sipmba_proto::v1 as pb;

use crate::config::WhenFull;

const READINGS: TableDefinition<u64, &[u8]> = TableDefinition::new("readings");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Command id → encoded `CommandAck` (the outcome recorded when it ran).
const EXECUTED: TableDefinition<&str, &[u8]> = TableDefinition::new("executed");
/// Executed command ids by when they ran (ms), for pruning.
const EXECUTED_AT: TableDefinition<(u64, &str), ()> = TableDefinition::new("executed_at");

const NEXT_SEQ: &str = "next_seq";
const ACKED_SEQ: &str = "acked_seq";
const DROPPED: &str = "dropped";

/// How long executed command ids are remembered: longer than any command's ttl (Control's
/// maximum is 7 days by default).
pub const REMEMBER_COMMANDS_MS: u64 = 8 * 24 * 3600 * 1000;

/// An outbox error.
#[derive(Debug, thiserror::Error)]
#[error("outbox: {0}")]
pub struct OutboxError(String);

fn err(e: impl std::fmt::Display) -> OutboxError {
    OutboxError(e.to_string())
}

/// What happened to an appended reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored with this seq.
    Stored(u64),
    /// Stored with this seq; the oldest readings were deleted to make room.
    StoredDroppingOldest {
        /// Its seq.
        seq: u64,
        /// How many were deleted.
        dropped: u64,
    },
    /// The outbox is full and keeps its oldest readings: this one was dropped.
    Dropped,
}

/// The outbox. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    db: std::sync::Arc<Database>,
    max_readings: u64,
    when_full: WhenFull,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("max_readings", &self.max_readings)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`.
    pub fn open(dir: &Path, max_readings: u64, when_full: WhenFull) -> Result<Self, OutboxError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| OutboxError(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("outbox.redb");
        let db = Database::create(&path)
            .map_err(|e| OutboxError(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(err)?;
        {
            txn.open_table(READINGS).map_err(err)?;
            txn.open_table(META).map_err(err)?;
            txn.open_table(EXECUTED).map_err(err)?;
            txn.open_table(EXECUTED_AT).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(Self {
            db: std::sync::Arc::new(db),
            max_readings,
            when_full,
        })
    }

    fn meta(&self, key: &str) -> Result<u64, OutboxError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(META).map_err(err)?;
        Ok(table.get(key).map_err(err)?.map_or(0, |v| v.value()))
    }

    /// The highest seq Collect has acknowledged (0 if none).
    pub fn acked_seq(&self) -> Result<u64, OutboxError> {
        self.meta(ACKED_SEQ)
    }

    /// How many readings wait to be acknowledged.
    pub fn depth(&self) -> Result<u64, OutboxError> {
        let txn = self.db.begin_read().map_err(err)?;
        txn.open_table(READINGS).map_err(err)?.len().map_err(err)
    }

    /// How many readings were dropped because the outbox was full, since it was created.
    pub fn dropped(&self) -> Result<u64, OutboxError> {
        self.meta(DROPPED)
    }

    /// Commits a new reading (numbered here) to disk.
    pub fn append(
        &self,
        device_time: prost_types::Timestamp,
        metrics: Vec<pb::Metric>,
        payload: Vec<u8>,
    ) -> Result<Appended, OutboxError> {
        let (last, _, dropped_oldest, dropped_new) =
            self.store([(device_time, metrics, payload)])?;
        Ok(match (last, dropped_oldest) {
            (None, _) if dropped_new > 0 => Appended::Dropped,
            (Some(seq), 0) => Appended::Stored(seq),
            (Some(seq), dropped) => Appended::StoredDroppingOldest { seq, dropped },
            (None, _) => Appended::Dropped,
        })
    }

    /// Commits many readings at once (one transaction), numbered in order: a backlog (tests,
    /// benchmarks). A full outbox applies its policy as for `append`. Returns how many were
    /// stored.
    pub fn append_many(
        &self,
        readings: impl IntoIterator<Item = (prost_types::Timestamp, Vec<pb::Metric>)>,
    ) -> Result<u64, OutboxError> {
        let (_, stored, _, _) =
            self.store(readings.into_iter().map(|(t, m)| (t, m, Vec::new())))?;
        Ok(stored)
    }

    /// Numbers and stores `readings` in one transaction, applying the policy of a full outbox.
    /// Returns the last seq stored, how many were stored, how many old readings were deleted and
    /// how many new ones were dropped.
    fn store(
        &self,
        readings: impl IntoIterator<Item = (prost_types::Timestamp, Vec<pb::Metric>, Vec<u8>)>,
    ) -> Result<(Option<u64>, u64, u64, u64), OutboxError> {
        let txn = self.db.begin_write().map_err(err)?;
        let (mut last, mut stored, mut dropped_oldest, mut dropped_new) = (None, 0, 0, 0);
        {
            let mut meta = txn.open_table(META).map_err(err)?;
            let mut table = txn.open_table(READINGS).map_err(err)?;
            let next = meta.get(NEXT_SEQ).map_err(err)?.map_or(0, |v| v.value());
            let acked = meta.get(ACKED_SEQ).map_err(err)?.map_or(0, |v| v.value());
            let mut seq = Ord::max(next, acked + 1).max(1);
            let mut count = table.len().map_err(err)?;
            for (device_time, metrics, payload) in readings {
                if count >= self.max_readings {
                    match self.when_full {
                        WhenFull::DropNewest => {
                            dropped_new += 1;
                            continue;
                        }
                        WhenFull::DropOldest => {
                            if table.pop_first().map_err(err)?.is_some() {
                                dropped_oldest += 1;
                                count -= 1;
                            }
                        }
                    }
                }
                let reading = pb::Reading {
                    seq,
                    device_time: Some(device_time),
                    metrics,
                    payload,
                };
                table
                    .insert(seq, reading.encode_to_vec().as_slice())
                    .map_err(err)?;
                last = Some(seq);
                stored += 1;
                seq += 1;
                count += 1;
            }
            meta.insert(NEXT_SEQ, seq).map_err(err)?;
            if dropped_oldest + dropped_new > 0 {
                let total = meta.get(DROPPED).map_err(err)?.map_or(0, |v| v.value());
                meta.insert(DROPPED, total + dropped_oldest + dropped_new)
                    .map_err(err)?;
            }
        }
        txn.commit().map_err(err)?;
        Ok((last, stored, dropped_oldest, dropped_new))
    }

    /// Up to `limit` readings with a seq above `after`, in seq order.
    pub fn pending(&self, after: u64, limit: usize) -> Result<Vec<pb::Reading>, OutboxError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(READINGS).map_err(err)?;
        let mut out = Vec::new();
        for entry in table.range(after.saturating_add(1)..).map_err(err)? {
            let (_, value) = entry.map_err(err)?;
            out.push(pb::Reading::decode(value.value()).map_err(err)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Collect has committed every reading up to `seq`: they are deleted, and new readings are
    /// numbered above it (a Welcome's `acked_seq` is authoritative).
    pub fn ack(&self, seq: u64) -> Result<(), OutboxError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut meta = txn.open_table(META).map_err(err)?;
            let acked = meta.get(ACKED_SEQ).map_err(err)?.map_or(0, |v| v.value());
            if seq > acked {
                meta.insert(ACKED_SEQ, seq).map_err(err)?;
            }
            let mut readings = txn.open_table(READINGS).map_err(err)?;
            readings.retain_in(..=seq, |_, _| false).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(())
    }

    /// The outcome recorded for a command that already ran, if it did.
    pub fn executed(
        &self,
        command: &str,
    ) -> Result<Option<pb::session_request::CommandAck>, OutboxError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(EXECUTED).map_err(err)?;
        table
            .get(command)
            .map_err(err)?
            .map(|v| pb::session_request::CommandAck::decode(v.value()).map_err(err))
            .transpose()
    }

    /// Records the outcome of a command that ran at `now_ms`; forgets commands that ran long
    /// enough ago that they cannot be delivered again.
    pub fn record_executed(
        &self,
        command: &str,
        ack: &pb::session_request::CommandAck,
        now_ms: u64,
    ) -> Result<(), OutboxError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut executed = txn.open_table(EXECUTED).map_err(err)?;
            let mut by_time = txn.open_table(EXECUTED_AT).map_err(err)?;
            executed
                .insert(command, ack.encode_to_vec().as_slice())
                .map_err(err)?;
            by_time.insert((now_ms, command), ()).map_err(err)?;
            let horizon = now_ms.saturating_sub(REMEMBER_COMMANDS_MS);
            let mut old = Vec::new();
            for entry in by_time.range(..(horizon, "")).map_err(err)? {
                let (key, _) = entry.map_err(err)?;
                let (at, id) = key.value();
                old.push((at, id.to_owned()));
            }
            for (at, id) in old {
                by_time.remove((at, id.as_str())).map_err(err)?;
                executed.remove(id.as_str()).map_err(err)?;
            }
        }
        txn.commit().map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(s: i64) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        }
    }

    fn metric(v: f64) -> Vec<pb::Metric> {
        vec![pb::Metric {
            name: "t".into(),
            value: Some(pb::metric::Value::Number(v)),
            unit: String::new(),
        }]
    }

    #[test]
    fn readings_stay_until_acknowledged_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), 100, WhenFull::DropOldest).unwrap();
        for i in 0..5 {
            assert_eq!(
                outbox.append(at(i), metric(i as f64), vec![]).unwrap(),
                Appended::Stored(u64::try_from(i).unwrap() + 1)
            );
        }
        outbox.ack(2).unwrap();
        drop(outbox);
        let outbox = Outbox::open(dir.path(), 100, WhenFull::DropOldest).unwrap();
        let seqs: Vec<u64> = outbox
            .pending(0, 10)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(outbox.pending(3, 1).unwrap()[0].seq, 4);
        assert_eq!(outbox.acked_seq().unwrap(), 2);
        // A Welcome ahead of the outbox (its state was lost) moves numbering past it.
        outbox.ack(40).unwrap();
        assert_eq!(outbox.depth().unwrap(), 0);
        assert_eq!(
            outbox.append(at(9), metric(9.0), vec![]).unwrap(),
            Appended::Stored(41)
        );
    }

    #[test]
    fn a_full_outbox_follows_its_policy() {
        let dir = tempfile::tempdir().unwrap();
        let oldest = Outbox::open(&dir.path().join("a"), 10, WhenFull::DropOldest).unwrap();
        for i in 0..10 {
            oldest.append(at(i), metric(0.0), vec![]).unwrap();
        }
        assert_eq!(
            oldest.append(at(10), metric(0.0), vec![]).unwrap(),
            Appended::StoredDroppingOldest {
                seq: 11,
                dropped: 1
            }
        );
        assert_eq!(oldest.pending(0, 1).unwrap()[0].seq, 2);
        let newest = Outbox::open(&dir.path().join("b"), 10, WhenFull::DropNewest).unwrap();
        for i in 0..10 {
            newest.append(at(i), metric(0.0), vec![]).unwrap();
        }
        assert_eq!(
            newest.append(at(10), metric(0.0), vec![]).unwrap(),
            Appended::Dropped
        );
        assert_eq!(newest.depth().unwrap(), 10);
        assert_eq!(newest.dropped().unwrap(), 1);
        // A backlog loaded at once follows the same policies.
        let backlog = || (0..5).map(|i| (at(20 + i), metric(1.0)));
        assert_eq!(newest.append_many(backlog()).unwrap(), 0);
        assert_eq!(newest.dropped().unwrap(), 6);
        assert_eq!(oldest.append_many(backlog()).unwrap(), 5);
        assert_eq!(oldest.depth().unwrap(), 10);
        assert_eq!(oldest.pending(0, 1).unwrap()[0].seq, 7);
    }

    #[test]
    fn executed_commands_are_remembered_then_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), 10, WhenFull::DropOldest).unwrap();
        let ack = pb::session_request::CommandAck {
            command: Some(pb::CommandId { value: "c1".into() }),
            outcome: pb::CommandOutcome::Acked as i32,
            detail: "fan on".into(),
            executed_at: None,
        };
        outbox.record_executed("c1", &ack, 1_000).unwrap();
        assert_eq!(outbox.executed("c1").unwrap(), Some(ack.clone()));
        assert_eq!(outbox.executed("c2").unwrap(), None);
        outbox
            .record_executed("c2", &ack, 1_000 + REMEMBER_COMMANDS_MS + 1)
            .unwrap();
        assert_eq!(outbox.executed("c1").unwrap(), None);
        assert!(outbox.executed("c2").unwrap().is_some());
    }
}
