//! The bucket of a targeting key, for percentage splits and rollouts.
//!
//! Fixed and documented, so that a key lands in the same bucket on every node, after every
//! restart and in every release: `bucket = fmix64(fnv1a64(flag ‖ 0x00 ‖ targeting_key)) mod
//! 10 000`, where `flag` is `<service>/<key>` (two flags split independently), FNV-1a is the
//! 64-bit variant (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`, the same as
//! [`crate::liveness::Fnv64`]) and `fmix64` is MurmurHash3's 64-bit finalizer, which spreads
//! FNV's weak low bits. A bucket is a basis point: a rollout at `p` percent serves keys whose
//! bucket is below `100 * p`.

use crate::liveness::Fnv64;

/// Buckets, one per basis point.
pub const BUCKETS: u32 = 10_000;

/// The bucket (0 to 9 999) of `targeting_key` for the flag `flag` (`<service>/<key>`).
pub fn bucket(flag: &str, targeting_key: &str) -> u32 {
    let mut hash = Fnv64::new();
    hash.write(flag.as_bytes());
    hash.write(&[0]);
    hash.write(targeting_key.as_bytes());
    (fmix64(hash.finish()) % u64::from(BUCKETS)) as u32
}

/// MurmurHash3's 64-bit finalizer.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_split_independently_and_buckets_stay_in_range() {
        assert_ne!(
            bucket("shop/checkout", "user-1"),
            bucket("shop/search", "user-1")
        );
        assert!((0..1000).all(|i| bucket("a/b", &format!("k{i}")) < BUCKETS));
        // The 0x00 separator: ("ab", "c") and ("a", "bc") are different inputs.
        assert_ne!(bucket("s/ab", "c"), bucket("s/a", "bc"));
    }
}
