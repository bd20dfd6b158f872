//! The model history buckets are checked against: what a bucket of each width holds, computed
//! in memory from every value stored.

use std::collections::BTreeMap;

use sipmba_processing::store::bucket_start;

/// (count, min, max, sum) per bucket start.
pub type Buckets = BTreeMap<i64, (u64, f64, f64, f64)>;

/// The buckets of `width` that the values of `points` (device time in ms, value) fall in.
pub fn buckets<'a>(points: impl IntoIterator<Item = &'a (i64, f64)>, width: i64) -> Buckets {
    let mut out = Buckets::new();
    for &(ms, value) in points {
        let b = out.entry(bucket_start(ms, width)).or_insert((
            0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
        ));
        b.0 += 1;
        b.1 = b.1.min(value);
        b.2 = b.2.max(value);
        b.3 += value;
    }
    out
}
