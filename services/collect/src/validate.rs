//! What a reading must look like (limits announced in Welcome and documented in collect.proto).

use std::collections::HashSet;

use prost::Message;
use sipmba_proto::v1 as pb;
use sipmba_runtime::{ServiceError, ServiceResult};

use crate::Settings;

/// Checks one reading; `previous` is the last seq seen in this session.
pub fn reading(r: &pb::Reading, previous: u64, limits: &Settings) -> ServiceResult<()> {
    let seq = r.seq;
    if seq == 0 {
        return Err(ServiceError::invalid("reading seq must start at 1"));
    }
    if seq <= previous {
        return Err(ServiceError::invalid(format!(
            "seq went backwards: {seq} after {previous}; readings are sent in increasing seq order"
        )));
    }
    let size = r.encoded_len();
    if size > limits.max_reading_bytes as usize {
        return Err(ServiceError::invalid(format!(
            "reading {seq} is {size} bytes encoded; the limit is {}",
            limits.max_reading_bytes
        )));
    }
    if r.metrics.len() > 256 {
        return Err(ServiceError::invalid(format!(
            "reading {seq} has {} metrics; at most 256",
            r.metrics.len()
        )));
    }
    let mut names = HashSet::new();
    for m in &r.metrics {
        if !sipmba_runtime::ids::valid_name(&m.name) {
            return Err(ServiceError::invalid(format!(
                "reading {seq}: metric name {:?} must be 1 to 64 characters of [A-Za-z0-9._-]",
                m.name
            )));
        }
        if !names.insert(m.name.as_str()) {
            return Err(ServiceError::invalid(format!(
                "reading {seq}: metric {:?} appears twice",
                m.name
            )));
        }
        match &m.value {
            None => {
                return Err(ServiceError::invalid(format!(
                    "reading {seq}: metric {:?} has no value",
                    m.name
                )));
            }
            Some(pb::metric::Value::Number(n)) if !n.is_finite() => {
                return Err(ServiceError::invalid(format!(
                    "reading {seq}: metric {:?} is not a finite number",
                    m.name
                )));
            }
            Some(pb::metric::Value::Text(t)) if t.len() > 1024 => {
                return Err(ServiceError::invalid(format!(
                    "reading {seq}: metric {:?} text is over 1024 bytes",
                    m.name
                )));
            }
            _ => {}
        }
        if m.unit.len() > 32 {
            return Err(ServiceError::invalid(format!(
                "reading {seq}: unit of {:?} is over 32 bytes",
                m.name
            )));
        }
    }
    Ok(())
}

/// Splits a group of validated readings of one thing into those not yet committed — seq above
/// `acked`, in their order — and the highest seq in the group (at least `acked`). A thing resends
/// what it has not seen acknowledged; what was committed before is dropped here, so each seq is
/// committed once.
pub fn unacked(readings: Vec<pb::Reading>, acked: u64) -> (u64, Vec<pb::Reading>) {
    let highest = readings.iter().map(|r| r.seq).fold(acked, u64::max);
    let fresh = readings.into_iter().filter(|r| r.seq > acked).collect();
    (highest, fresh)
}

/// Checks a batch: its size and every reading, in order.
pub fn batch(readings: &[pb::Reading], mut previous: u64, limits: &Settings) -> ServiceResult<u64> {
    if readings.is_empty() || readings.len() > limits.max_batch_readings as usize {
        return Err(ServiceError::invalid(format!(
            "a batch holds 1 to {} readings, this one {}",
            limits.max_batch_readings,
            readings.len()
        )));
    }
    for r in readings {
        reading(r, previous, limits)?;
        previous = r.seq;
    }
    Ok(previous)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn reading(seq: u64) -> pb::Reading {
        pb::Reading {
            seq,
            ..Default::default()
        }
    }

    proptest! {
        /// The readings above the acknowledged position are kept, in order; the highest seq is
        /// the group's, or the position when the group is all resent.
        #[test]
        fn unacked_keeps_exactly_the_readings_above_the_position(
            seqs in proptest::collection::btree_set(1u64..500, 0..64),
            acked in 0u64..500,
        ) {
            let seqs: Vec<u64> = seqs.into_iter().collect();
            let (highest, fresh) = unacked(seqs.iter().copied().map(reading).collect(), acked);
            let fresh: Vec<u64> = fresh.iter().map(|r| r.seq).collect();
            let above: Vec<u64> = seqs.iter().copied().filter(|s| *s > acked).collect();
            prop_assert_eq!(fresh, above);
            prop_assert_eq!(highest, seqs.last().copied().unwrap_or(0).max(acked));
        }

        /// A thing that loses acknowledgements resends from what it last saw acknowledged, over
        /// new sessions; across all of them every seq it sent is committed exactly once.
        #[test]
        fn resends_over_lost_acks_commit_every_seq_once(
            steps in proptest::collection::vec((1u64..20, any::<bool>()), 1..40),
        ) {
            let limits = Settings::default();
            let (mut device_acked, mut collect_acked, mut sent) = (0u64, 0u64, 0u64);
            let mut committed = Vec::new();
            for (more, ack_arrives) in steps {
                // A new session: the outbox sends everything above what it saw acknowledged.
                sent = sent.max(device_acked) + more;
                let batch: Vec<pb::Reading> = (device_acked + 1..=sent).map(reading).collect();
                // Order is checked within a session, which starts from nothing.
                let mut previous = 0;
                for group in batch.chunks(limits.max_batch_readings as usize) {
                    previous = super::batch(group, previous, &limits)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let (highest, fresh) = unacked(group.to_vec(), collect_acked);
                    committed.extend(fresh.iter().map(|r| r.seq));
                    collect_acked = highest;
                }
                if ack_arrives {
                    device_acked = collect_acked;
                }
            }
            prop_assert_eq!(committed, (1..=sent).collect::<Vec<_>>());
        }
    }
}
