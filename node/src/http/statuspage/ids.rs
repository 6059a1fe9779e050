//! Ids and times of the Statuspage answers.
//!
//! Statuspage's ids are 12 lower-case letters and digits. statusmesh has no such ids: every
//! record is keyed by names (service, component, incident id, maintenance id) that are the
//! same on every node, so an id here is a hash of what kind of thing it is and those names.
//! Every node computes the same id for the same record, with no coordination, and an id never
//! changes while its record lives. Times are ISO 8601 in UTC with milliseconds
//! (`2026-12-02T14:10:07.000Z`), as Statuspage writes them.

use sha2::{Digest, Sha256};

/// Length of an id, as Statuspage's.
pub const ID_CHARS: usize = 12;

/// The id of a thing of `kind` named by `parts`: 12 characters of `[0-9a-z]`, the same on
/// every node. Parts are length-prefixed, so `("a/b", "c")` and `("a", "b/c")` differ.
pub fn id(kind: &str, parts: &[&str]) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut hash = Sha256::new();
    hash.update(kind.as_bytes());
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    // 8 bytes give 64 bits; 12 base-36 digits hold 62 of them, plenty against collisions
    // among the few thousand records a page holds.
    let mut n = u64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]));
    let mut out = [b'0'; ID_CHARS];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `at_ms` (milliseconds since the Unix epoch) as ISO 8601 in UTC with milliseconds.
pub fn iso8601(at_ms: u64) -> String {
    const DAY_MS: u64 = 24 * 3600 * 1000;
    let days = (at_ms / DAY_MS) as i64;
    let in_day = at_ms % DAY_MS;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

/// The proleptic Gregorian date of `days` since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_twelve_base36_characters_and_depend_only_on_the_names() {
        let a = id("component", &["api", "db"]);
        assert_eq!(a.len(), ID_CHARS);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
        assert_eq!(a, id("component", &["api", "db"]));
        assert_ne!(a, id("component", &["api", "web"]));
        assert_ne!(a, id("group", &["api", "db"]));
        assert_ne!(id("x", &["a/b", "c"]), id("x", &["a", "b/c"]));
    }

    #[test]
    fn times_are_iso8601_utc_with_milliseconds() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601(1_796_220_607_123), "2026-12-02T14:10:07.123Z");
        assert_eq!(iso8601(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }
}
