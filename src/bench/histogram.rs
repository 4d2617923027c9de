//! A latency histogram with logarithmic buckets (the layout of HdrHistogram with two significant digits),
//! written here because it is about 100 lines and the bench needs nothing else from a crate.
//!
//! Rules the code keeps:
//! - Values (nanoseconds, any `u64`) below 128 are counted exactly; above, each power of two is split into
//!   64 equal sub-buckets, so a bucket's width is at most 1/64 of its lower bound: a reported quantile is
//!   at most 1.6% above the true one, never below it (a bucket reports its highest value, clamped to the
//!   largest value recorded).
//! - Fixed size (3,776 counters, 30 KiB), no allocation while recording; one histogram per thread, merged at
//!   the end, so recording takes no lock.
//! - `min`, `max`, `count` and `sum` are exact.

/// Values below `2^SUB_BITS` have a bucket each.
const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
const HALF: usize = SUB / 2;
/// Largest shift is 64 - SUB_BITS = 57; buckets: SUB + 57 * HALF.
const BUCKETS: usize = SUB + (64 - SUB_BITS as usize) * HALF;

/// A log-bucket histogram of `u64` values.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish()
    }
}

/// The bucket of `v`.
fn index(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let bits = 64 - v.leading_zeros(); // > SUB_BITS
    let shift = bits - SUB_BITS;
    let m = (v >> shift) as usize; // in HALF..SUB
    SUB + (shift as usize - 1) * HALF + (m - HALF)
}

/// The highest value that falls in bucket `i`.
fn highest(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let shift = ((i - SUB) / HALF + 1) as u32;
    let m = ((i - SUB) % HALF + HALF) as u64;
    // (m + 1) << shift can reach 2^64 for the last bucket.
    ((m + 1) << shift).wrapping_sub(1).max(m << shift)
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Counts one value `v` (nanoseconds, for the bench's latencies); never allocates.
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.count += 1;
        self.sum += v as u128;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Smallest value recorded (0 if none).
    pub fn min(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min
        }
    }

    /// Largest value recorded (0 if none).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Arithmetic mean (0 if none).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value at quantile `p` (0..=100, e.g. 99.9): the smallest bucket bound with at least
    /// `ceil(p/100 * count)` values at or below it, clamped to `[min, max]`. 0 if nothing was recorded.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let p = p.clamp(0.0, 100.0);
        let rank = ((p / 100.0 * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return highest(i).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        // Every bucket's highest value is one below the next bucket's lowest.
        for i in 0..BUCKETS - 1 {
            assert_eq!(index(highest(i)), i, "bucket {i}");
            assert_eq!(index(highest(i) + 1), i + 1, "bucket {i}");
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        assert_eq!(highest(BUCKETS - 1), u64::MAX);
        // Relative width at most 1/64 beyond the exact range.
        for v in [
            128u64,
            1_000,
            65_537,
            1_000_000,
            123_456_789,
            1 << 40,
            u64::MAX / 3,
        ] {
            let h = highest(index(v));
            assert!(h >= v);
            assert!((h - v) as f64 <= v as f64 / 64.0, "v {v} h {h}");
        }
    }

    #[test]
    fn exact_below_128() {
        let mut h = Histogram::new();
        for v in 0..100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.min(), 0);
        assert_eq!(h.max(), 99);
        assert_eq!(h.percentile(50.0), 49);
        assert_eq!(h.percentile(99.0), 98);
        assert_eq!(h.percentile(100.0), 99);
        assert_eq!(h.percentile(0.0), 0);
        assert!((h.mean() - 49.5).abs() < 1e-9);
    }

    #[test]
    fn quantiles_within_error_bound() {
        // 1..=100_000 microseconds in nanoseconds: the true p-quantile is p * 1000 µs.
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for p in [50.0, 90.0, 99.0, 99.9] {
            let truth = (p / 100.0 * 100_000.0) as u64 * 1000;
            let got = h.percentile(p);
            assert!(got >= truth, "p{p}: {got} < {truth}");
            assert!(
                got as f64 <= truth as f64 * (1.0 + 1.0 / 64.0),
                "p{p}: {got} vs {truth}"
            );
        }
        assert_eq!(h.percentile(100.0), 100_000_000);
        assert_eq!(h.max(), 100_000_000);
    }

    #[test]
    fn a_single_value_is_every_quantile() {
        let mut h = Histogram::new();
        h.record(123_456);
        for p in [0.0, 50.0, 99.9, 100.0] {
            assert_eq!(h.percentile(p), 123_456);
        }
    }

    #[test]
    fn merge_equals_recording_together() {
        let (mut a, mut b, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
        for v in 0..10_000u64 {
            let x = v * v % 7_777_777;
            if v % 3 == 0 {
                a.record(x)
            } else {
                b.record(x)
            }
            all.record(x);
        }
        a.merge(&b);
        assert_eq!(a.count(), all.count());
        assert_eq!(a.min(), all.min());
        assert_eq!(a.max(), all.max());
        for p in [1.0, 50.0, 90.0, 99.0, 99.9] {
            assert_eq!(a.percentile(p), all.percentile(p));
        }
    }

    #[test]
    fn empty_is_zero() {
        let h = Histogram::new();
        assert_eq!(
            (h.count(), h.min(), h.max(), h.percentile(99.0)),
            (0, 0, 0, 0)
        );
        assert_eq!(h.mean(), 0.0);
    }
}
