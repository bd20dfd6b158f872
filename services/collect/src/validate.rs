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
