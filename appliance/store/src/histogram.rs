//! Log-bucket histograms, as the Kubernetes VPA recommender keeps them.
//!
//! Bucket `i` starts at `first_bucket_size * (ratio^i - 1) / (ratio - 1)`, so every bucket is
//! `ratio` (5 %) wider than the one before. A percentile answers the *end* of the bucket that
//! holds it (as the VPA does), so it is never below the exact nearest-rank percentile (the
//! smallest sample with at least that share of samples at or below it) and at most one bucket
//! width above it. Interpolating definitions (DuckDB's `quantile_cont`, PromQL's
//! `quantile_over_time`) can lie above that when few samples sit between two far-apart values,
//! as with short-lived containers: the peers benchmark shows by how much. Histograms of different hours or pods merge by adding counts, which is what
//! makes a 30-day percentile a read of hourly rows instead of raw samples.

use std::collections::BTreeMap;

/// How values map to buckets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistogramOptions {
    pub first_bucket_size: f64,
    pub ratio: f64,
    pub buckets: u16,
}

/// CPU in cores: the first bucket is 10 millicores wide, the last starts near 1,000 cores.
pub const CPU: HistogramOptions = HistogramOptions {
    first_bucket_size: 0.01,
    ratio: 1.05,
    buckets: 176,
};

/// Memory in bytes: the first bucket is 10 MB wide, the last starts near 1 TB.
pub const MEMORY: HistogramOptions = HistogramOptions {
    first_bucket_size: 1e7,
    ratio: 1.05,
    buckets: 176,
};

impl HistogramOptions {
    /// The bucket a value falls in; negative and NaN values count in bucket 0.
    pub fn bucket(&self, value: f64) -> u16 {
        if value.is_nan() || value < self.first_bucket_size {
            return 0;
        }
        let index = ((value * (self.ratio - 1.0) / self.first_bucket_size + 1.0).ln()
            / self.ratio.ln())
        .floor();
        let mut bucket = (index as u64).min(u64::from(self.buckets - 1)) as u16;
        // Floating point can put a value that sits exactly on a boundary one bucket off.
        while bucket > 0 && self.bucket_start(bucket) > value {
            bucket -= 1;
        }
        while bucket + 1 < self.buckets && self.bucket_start(bucket + 1) <= value {
            bucket += 1;
        }
        bucket
    }

    pub fn bucket_start(&self, bucket: u16) -> f64 {
        self.first_bucket_size * (self.ratio.powi(i32::from(bucket)) - 1.0) / (self.ratio - 1.0)
    }

    /// Where the bucket ends; the last bucket has no end, so its start is answered.
    pub fn bucket_end(&self, bucket: u16) -> f64 {
        if bucket + 1 >= self.buckets {
            self.bucket_start(bucket)
        } else {
            self.bucket_start(bucket + 1)
        }
    }
}

/// A sparse histogram: bucket index → sample count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    counts: BTreeMap<u16, u64>,
}

impl Histogram {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, options: &HistogramOptions, value: f64) {
        *self.counts.entry(options.bucket(value)).or_default() += 1;
    }

    pub fn add_count(&mut self, bucket: u16, count: u64) {
        if count > 0 {
            *self.counts.entry(bucket).or_default() += count;
        }
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (&bucket, &count) in &other.counts {
            self.add_count(bucket, count);
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// `(bucket, count)` pairs in bucket order.
    pub fn entries(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.counts.iter().map(|(&b, &c)| (b, c))
    }

    /// The end of the bucket holding the `q` quantile (0 ≤ q ≤ 1), or `None` when empty.
    pub fn quantile(&self, options: &HistogramOptions, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let threshold = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        let mut last = 0u16;
        for (&bucket, &count) in &self.counts {
            seen += count;
            last = bucket;
            if seen as f64 >= threshold {
                break;
            }
        }
        Some(options.bucket_end(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_grow_five_percent_from_the_first_size() {
        assert_eq!(CPU.bucket(0.0), 0);
        assert_eq!(CPU.bucket(0.0099), 0);
        assert_eq!(CPU.bucket(0.01), 1);
        assert!((CPU.bucket_start(1) - 0.01).abs() < 1e-12);
        assert!((CPU.bucket_start(2) - 0.0205).abs() < 1e-12);
        for b in 1..CPU.buckets - 1 {
            let width = CPU.bucket_start(b + 1) - CPU.bucket_start(b);
            let previous = CPU.bucket_start(b) - CPU.bucket_start(b - 1);
            assert!((width / previous - 1.05).abs() < 1e-9);
            assert_eq!(CPU.bucket(CPU.bucket_start(b)), b, "start of {b}");
        }
        assert!(CPU.bucket_start(CPU.buckets - 1) > 900.0);
        assert!(MEMORY.bucket_start(MEMORY.buckets - 1) > 0.9e12);
        assert_eq!(CPU.bucket(1e9), CPU.buckets - 1);
        assert_eq!(CPU.bucket(f64::NAN), 0);
        assert_eq!(CPU.bucket(-3.0), 0);
    }

    #[test]
    fn quantile_is_the_end_of_the_bucket_that_holds_it() {
        let mut h = Histogram::new();
        assert_eq!(h.quantile(&CPU, 0.95), None);
        for _ in 0..95 {
            h.add(&CPU, 0.1);
        }
        for _ in 0..5 {
            h.add(&CPU, 2.0);
        }
        let p95 = h.quantile(&CPU, 0.95).unwrap();
        assert_eq!(p95, CPU.bucket_end(CPU.bucket(0.1)));
        let b = CPU.bucket(0.1);
        assert!(
            p95 >= 0.1 && p95 - 0.1 <= CPU.bucket_end(b) - CPU.bucket_start(b),
            "{p95}"
        );
        let p99 = h.quantile(&CPU, 0.99).unwrap();
        let b = CPU.bucket(2.0);
        assert!(
            p99 >= 2.0 && p99 - 2.0 <= CPU.bucket_end(b) - CPU.bucket_start(b),
            "{p99}"
        );
    }

    #[test]
    fn merged_histograms_equal_one_histogram_of_all_values() {
        let values: Vec<f64> = (0..1000).map(|i| (i as f64 * 0.37) % 3.0).collect();
        let mut whole = Histogram::new();
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        for (i, v) in values.iter().enumerate() {
            whole.add(&CPU, *v);
            if i % 3 == 0 {
                a.add(&CPU, *v)
            } else {
                b.add(&CPU, *v)
            }
        }
        a.merge(&b);
        assert_eq!(a, whole);
        assert_eq!(a.total(), 1000);
    }
}
