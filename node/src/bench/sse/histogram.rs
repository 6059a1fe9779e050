//! Latency histograms shared by every subscriber, and sorted connect times.

use std::sync::atomic::{AtomicU64, Ordering};

/// Latencies in microseconds, bucketed with under 0.1% relative error: values below 2048
/// exactly, larger ones by their top 11 significant bits. Shared by every subscriber.
#[derive(Debug)]
pub(super) struct Histogram {
    pub(super) counts: Vec<AtomicU64>,
    pub(super) max_us: AtomicU64,
}

/// Buckets for values up to 2^50 microseconds (far past any run).
pub(super) const HISTOGRAM_BUCKETS: usize = 2048 + 40 * 1024;

impl Histogram {
    pub(super) fn new() -> Self {
        Self {
            counts: (0..HISTOGRAM_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
        }
    }

    pub(super) fn record(&self, us: u64) {
        let index = bucket_of(us).min(HISTOGRAM_BUCKETS - 1);
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The given quantiles and the maximum, in milliseconds; None when empty.
    pub(super) fn percentiles<const N: usize>(
        &self,
        quantiles: &[f64; N],
    ) -> Option<([f64; N], f64)> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let max_us = self.max_us.load(Ordering::Relaxed);
        Self::quantiles(&counts, max_us, quantiles)
    }

    /// Like [`Self::percentiles`], and empties the histogram (recorders may race with it:
    /// a value lands in this drain or the next).
    pub(super) fn drain<const N: usize>(&self, quantiles: &[f64; N]) -> Option<([f64; N], f64)> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed))
            .collect();
        let max_us = self.max_us.swap(0, Ordering::Relaxed);
        Self::quantiles(&counts, max_us, quantiles)
    }

    pub(super) fn quantiles<const N: usize>(
        counts: &[u64],
        max_us: u64,
        quantiles: &[f64; N],
    ) -> Option<([f64; N], f64)> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let mut values = [0.0; N];
        for (value, q) in values.iter_mut().zip(quantiles) {
            // The rank of the quantile, 1-based, as a nearest-rank percentile.
            let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0;
            for (index, count) in counts.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    *value = bucket_low(index) as f64 / 1_000.0;
                    break;
                }
            }
        }
        Some((values, max_us as f64 / 1_000.0))
    }
}

pub(super) fn bucket_of(us: u64) -> usize {
    if us < 2048 {
        return us as usize;
    }
    // Keep the top 11 bits: us >> shift lies in 1024..2048.
    let shift = 63 - us.leading_zeros() - 10;
    2048 + (shift as usize - 1) * 1024 + ((us >> shift) - 1024) as usize
}

pub(super) fn bucket_low(index: usize) -> u64 {
    if index < 2048 {
        return index as u64;
    }
    let shift = (index - 2048) / 1024 + 1;
    let mantissa = ((index - 2048) % 1024) as u64 + 1024;
    mantissa << shift
}

/// Connect times in microseconds, sorted once.
#[derive(Debug)]
pub(super) struct Percentiles(Vec<u64>);

impl Percentiles {
    pub(super) fn from_micros(mut micros: Vec<u64>) -> Self {
        micros.sort_unstable();
        Self(micros)
    }

    /// The nearest-rank quantile `q` in milliseconds (0 when empty).
    pub(super) fn at(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1] as f64 / 1_000.0
    }
}
