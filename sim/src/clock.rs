//! Virtual time and the nodes' skewed clocks.
//!
//! The simulator keeps time in microseconds since the start of the run, so that 1 ms
//! intra-region latencies can carry jitter. Nodes see milliseconds since the Unix epoch,
//! shifted by their fixed clock skew; this module is the only place that converts between
//! the two.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Node clocks read as milliseconds since the Unix epoch; the run starts here (Nov 2023).
pub(crate) const CLOCK_BASE_MS: u64 = 1_700_000_000_000;

/// A node's fixed clock skew, uniform in `-skew_ms_max..=skew_ms_max` (no draw without skew,
/// so that plans without skew read the same RNG stream).
pub(crate) fn draw_skew_ms(rng: &mut ChaCha8Rng, skew_ms_max: u64) -> i64 {
    let skew = skew_ms_max as i64;
    if skew > 0 {
        rng.random_range(-skew..=skew)
    } else {
        0
    }
}

/// What a node whose clock is off by `skew_ms` reads at virtual time `now_us`.
pub(crate) fn local_ms(now_us: u64, skew_ms: i64) -> u64 {
    let ms = (CLOCK_BASE_MS + now_us / 1_000) as i64 + skew_ms;
    ms.max(0) as u64
}

/// The virtual time at which a node whose clock is off by `skew_ms` reads `local_ms` (its
/// timer deadline); a deadline before the run's start is the start.
pub(crate) fn at_us(local_ms: u64, skew_ms: i64) -> u64 {
    let sim_ms = local_ms as i64 - CLOCK_BASE_MS as i64 - skew_ms;
    (sim_ms.max(0) as u64).saturating_mul(1_000)
}

/// The true time at `now_us` (what a node without skew reads): views are compared at it.
pub(crate) fn true_ms(now_us: u64) -> u64 {
    CLOCK_BASE_MS + now_us / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_deadline_maps_back_to_the_virtual_time_it_was_read_at() {
        for skew_ms in [-250, 0, 40] {
            let now_us = 12_345_000;
            assert_eq!(at_us(local_ms(now_us, skew_ms), skew_ms), now_us);
        }
        assert_eq!(local_ms(0, 0), true_ms(0));
        assert_eq!(at_us(CLOCK_BASE_MS - 5, 0), 0);
    }
}
