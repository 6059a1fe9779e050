//! Unit tests of the benchmark's decoders, histogram and bookkeeping.

use super::decode::{Chunked, LineScan};
use super::histogram::{bucket_low, bucket_of, HISTOGRAM_BUCKETS};
use super::*;

fn shared(tag: &str, writes: u64) -> Shared {
    Shared {
        epoch: Instant::now(),
        tag: tag.to_owned(),
        writes,
        sent_at_us: Vec::new(),
        latency: Histogram::new(),
        window: Histogram::new(),
        received: AtomicU64::new(0),
    }
}

#[test]
fn histogram_buckets_round_down_by_under_a_thousandth() {
    for us in [
        0,
        1,
        2047,
        2048,
        2049,
        5_000,
        99_999,
        1_234_567,
        10_000_000_000,
    ] {
        let low = bucket_low(bucket_of(us));
        assert!(low <= us, "{us} -> {low}");
        assert!((us - low) as f64 <= us as f64 / 1000.0, "{us} -> {low}");
    }
    assert!(bucket_of(u64::from(u32::MAX) << 8) < HISTOGRAM_BUCKETS);
}

#[test]
fn histogram_percentiles_are_nearest_rank() {
    let histogram = Histogram::new();
    for ms in 1..=100 {
        histogram.record(ms * 1_000);
    }
    let (values, max) = histogram
        .percentiles(&[0.50, 0.99])
        .expect("samples were recorded");
    assert!((values[0] - 50.0).abs() < 0.1, "{values:?}");
    assert!((values[1] - 99.0).abs() < 0.1, "{values:?}");
    assert_eq!(max, 100.0);
    // A drain reports the same and leaves the histogram empty for the next interval.
    let (drained, _) = histogram.drain(&[0.50]).expect("samples");
    assert!((drained[0] - 50.0).abs() < 0.1, "{drained:?}");
    assert!(histogram.percentiles(&[0.50]).is_none());
}

#[test]
fn scanner_finds_status_data_split_across_reads_and_counts_snapshots() {
    let stream = b"retry: 1000\nevent: snapshot\nid: c1\ndata: {\"services\":[]}\n\n\
        event: status\nid: c2\ndata: {\"message\":\"run-3\",\"state\":\"operational\"}\n\n\
        : heartbeat\n\nevent: snapshot\ndata: {}\n\n";
    for split in 0..stream.len() {
        let mut scan = LineScan::default();
        let mut lines = Vec::new();
        scan.feed(&stream[..split], |l| lines.push(l.to_vec()));
        scan.feed(&stream[split..], |l| lines.push(l.to_vec()));
        assert_eq!(lines.len(), 1, "split at {split}");
        assert_eq!(scan.events, 3, "split at {split}");
        assert_eq!(scan.snapshots, 2, "split at {split}");
        let shared = shared("run", 10);
        assert_eq!(shared.write_of(&lines[0]), Some(3));
    }
}

#[test]
fn scanner_skips_lines_longer_than_its_bound() {
    let mut scan = LineScan::default();
    let mut long = b"event: snapshot\ndata: ".to_vec();
    long.extend(std::iter::repeat_n(b'x', LINE_BYTES_MAX * 3));
    long.extend_from_slice(b"\n\nevent: status\ndata: {\"message\":\"run-0\"}\n\n");
    let mut lines = 0;
    for chunk in long.chunks(1000) {
        scan.feed(chunk, |_| lines += 1);
    }
    assert_eq!(lines, 1);
    assert_eq!(scan.events, 2);
    assert!(scan.partial.capacity() <= LINE_BYTES_MAX);
}

#[test]
fn only_this_runs_writes_are_counted() {
    let shared = shared("sse0001", 5);
    assert_eq!(shared.write_of(br#"{"message":"sse0001-4"}"#), Some(4));
    assert_eq!(shared.write_of(br#"{"message":"sse0001-5"}"#), None);
    assert_eq!(shared.write_of(br#"{"message":"sse0002-1"}"#), None);
    assert_eq!(shared.write_of(br#"{"message":"hello"}"#), None);
    assert_eq!(shared.write_of(br#"{"state":"operational"}"#), None);
}

#[test]
fn chunked_bodies_decode_across_any_split() {
    let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
    for split in 0..body.len() {
        let mut chunked = Chunked::default();
        let mut out = Vec::new();
        let first = chunked
            .decode(&body[..split], |d| out.extend_from_slice(d))
            .expect("valid");
        let done = chunked
            .decode(&body[split..], |d| out.extend_from_slice(d))
            .expect("valid");
        // The body ends with the zero-size chunk's line; the final CRLF is not awaited.
        assert!(!first || split >= body.len() - 2, "split at {split}");
        assert!(done, "split at {split}");
        assert_eq!(out, b"hello, world", "split at {split}");
    }
}

#[test]
fn malformed_chunks_are_errors() {
    let mut chunked = Chunked::default();
    assert!(chunked.decode(b"zz\r\n", |_| {}).is_err());
    let mut chunked = Chunked::default();
    assert!(chunked.decode(b"2\r\nabc\r\n", |_| {}).is_err());
    let mut chunked = Chunked::default();
    assert!(chunked.decode(b"ffffffffffff\r\n", |_| {}).is_err());
}

#[test]
fn urls_resolve_to_an_authority_and_a_prefix() {
    let target = HttpTarget::parse("http://127.0.0.1:8101/").expect("valid");
    assert_eq!(target.authority, "127.0.0.1:8101");
    assert_eq!(target.path_prefix, "");
    let target = HttpTarget::parse("http://example.invalid/mesh").expect("valid");
    assert_eq!(target.authority, "example.invalid:80");
    assert_eq!(target.path_prefix, "/mesh");
    assert!(HttpTarget::parse("https://127.0.0.1:8101").is_err());
}
