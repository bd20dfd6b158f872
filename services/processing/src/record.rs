//! A telemetry record as Processing reads it from the log: the thing, its reading, and when
//! Collect received it.

use prost::Message;
use sipmba_proto::v1 as pb;
use uuid::Uuid;

/// A reading as read from the log, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// The thing.
    pub thing: Uuid,
    /// The reading.
    pub reading: pb::Reading,
    /// When Collect received it (ms).
    pub received_ms: i64,
}

impl Incoming {
    /// Device time (ms); the received time when the device sent none.
    pub fn device_ms(&self) -> i64 {
        self.reading
            .device_time
            .as_ref()
            .and_then(|t| sipmba_runtime::ids::timestamp_to_ms("device_time", t).ok())
            .unwrap_or(self.received_ms)
    }
}

/// Decodes one telemetry record; an error for a poison record (the caller logs and skips it).
pub fn decode(value: &[u8]) -> Result<Incoming, String> {
    let record = pb::TelemetryRecord::decode(value).map_err(|e| e.to_string())?;
    let thing = record
        .thing
        .as_ref()
        .and_then(|t| Uuid::parse_str(&t.value).ok())
        .ok_or("no valid thing id")?;
    let reading = record.reading.ok_or("no reading")?;
    let received_ms = record
        .received_time
        .as_ref()
        .and_then(|t| sipmba_runtime::ids::timestamp_to_ms("received_time", t).ok())
        .unwrap_or_else(sipmba_runtime::ids::now_ms);
    Ok(Incoming {
        thing,
        reading,
        received_ms,
    })
}
