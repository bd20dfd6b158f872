//! The rule condition language of `sipmba rules create --when` (`<metric> <op> <number>`): any
//! text is refused with a usage error or parsed into a condition that renders back to itself.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a fuzz target fails loudly

use libfuzzer_sys::fuzz_target;
use sipmba_proto::v1::Comparison;

fn op(c: Comparison) -> &'static str {
    match c {
        Comparison::Gt => ">",
        Comparison::Ge => ">=",
        Comparison::Lt => "<",
        Comparison::Le => "<=",
        Comparison::Eq => "==",
        Comparison::Ne => "!=",
        Comparison::Unspecified => unreachable!("the parser never yields it"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match sipmba::cli::condition(text) {
        Ok((metric, comparison, threshold)) => {
            assert!(!metric.is_empty() && metric == metric.trim(), "{metric:?}");
            assert!(threshold.is_finite(), "{threshold}");
            let rendered = format!("{metric} {} {threshold}", op(comparison));
            let (m, c, t) = sipmba::cli::condition(&rendered)
                .unwrap_or_else(|e| panic!("{rendered:?} does not parse back: {}", e.message));
            assert_eq!(
                (m.as_str(), c),
                (metric.as_str(), comparison),
                "{rendered:?}"
            );
            assert_eq!(t.to_bits(), threshold.to_bits(), "{rendered:?}");
        }
        Err(e) => assert!(e.message.contains("--when"), "{}", e.message),
    }
});
