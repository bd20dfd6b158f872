//! A device's session stream as Collect reads it: `SessionRequest` frames (length-delimited here,
//! one per gRPC message there) decoded from untrusted bytes, Hello first and only once, each
//! telemetry batch checked by `validate::batch` in session order and cut by `validate::unacked`
//! at the acknowledged position — the same functions the session loop calls.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a fuzz target fails loudly

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sipmba_collect::{Settings, validate};
use sipmba_proto::v1::{self as pb, session_request::Frame};

fuzz_target!(|data: &[u8]| {
    let limits = Settings::default();
    // The first two bytes are the position a previous session acknowledged.
    let (acked, mut rest) = match data {
        [a, b, rest @ ..] => (u64::from(u16::from_le_bytes([*a, *b])), rest),
        _ => return,
    };
    let mut acked = acked;
    let mut previous = 0u64;
    let mut first = true;
    while !rest.is_empty() {
        // A frame that does not decode ends the session (tonic answers INTERNAL for the codec,
        // before any of ours runs).
        let Ok(request) = pb::SessionRequest::decode_length_delimited(&mut rest) else {
            return;
        };
        match (first, request.frame) {
            (true, Some(Frame::Hello(_))) => first = false,
            // Anything else first, a second Hello, a Goodbye or an empty frame ends the session.
            (true, _) | (false, Some(Frame::Hello(_) | Frame::Goodbye(_)) | None) => return,
            (false, Some(Frame::CommandAck(_))) => {}
            (false, Some(Frame::Telemetry(batch))) => {
                match validate::batch(&batch.readings, previous, &limits) {
                    Ok(last) => {
                        let mut seq = previous;
                        for r in &batch.readings {
                            assert!(r.seq > seq, "validated readings increase");
                            assert!(r.encoded_len() <= limits.max_reading_bytes as usize);
                            seq = r.seq;
                        }
                        assert_eq!(last, seq);
                        let (highest, fresh) = validate::unacked(batch.readings, acked);
                        assert!(
                            fresh.iter().all(|r| r.seq > acked),
                            "nothing committed twice"
                        );
                        assert!(highest >= acked && highest >= last);
                        acked = highest;
                        previous = last;
                    }
                    Err(e) => {
                        // The device is told what is wrong, as INVALID_ARGUMENT.
                        let status = tonic::Status::from(e);
                        assert_eq!(status.code(), tonic::Code::InvalidArgument);
                        assert!(!status.message().is_empty());
                        return;
                    }
                }
            }
        }
    }
});
