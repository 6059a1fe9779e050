//! The archive's tests: round trips, torn and corrupt tails, bounds, and garbage.

use proptest::prelude::*;

use super::decode::Input;
use super::encode::put_varint;
use super::*;
use crate::epoch::WRITER_LEN;

fn name(text: &str) -> Name {
    Name::parse("name", text).expect("name")
}

fn write(at_ms: u64, component: &str, region: &str, state: State, n: u64) -> ArchivedWrite {
    ArchivedWrite {
        at_ms,
        changed_at_ms: at_ms / 100 * 100,
        component: name(component),
        region: name(region),
        state,
        message: "all good".into(),
        reporter: "probe".into(),
        origin_node: Some("n1".into()),
        writer: [7; WRITER_LEN],
        n,
    }
}

fn sample(count: u64) -> Vec<ArchivedWrite> {
    (0..count)
        .map(|i| {
            let state = State::ALL[(i % 5) as usize];
            write(
                1_000 + i * 7,
                &format!("c{}", i % 40),
                "eu",
                state,
                1 + i / 10,
            )
        })
        .collect()
}

#[test]
fn blocks_written_in_several_appends_read_back_in_order() {
    let writes = sample(300);
    let mut writer = ArchiveWriter::new();
    let mut file = writer.encode(&writes[..100]);
    file.extend(writer.encode(&writes[100..]));
    let (read, valid) = ArchiveReader::read(&file);
    assert_eq!(valid, file.len());
    assert_eq!(read, writes);
}

#[test]
fn a_resumed_writer_refers_to_the_definitions_of_earlier_blocks() {
    let writes = sample(200);
    let mut file = ArchiveWriter::new().encode(&writes[..100]);
    let (mut resumed, valid) = ArchiveWriter::resume(&file);
    assert_eq!(valid, file.len());
    let second = resumed.encode(&writes[100..]);
    // Every component was defined by the first block: the second defines none.
    let mut continuous = ArchiveWriter::new();
    let _ = continuous.encode(&writes[..100]);
    assert_eq!(second, continuous.encode(&writes[100..]));
    file.extend(second);
    assert_eq!(ArchiveReader::read(&file).0, writes);
}

#[test]
fn a_torn_tail_is_cut_at_the_end_of_the_last_whole_block() {
    let writes = sample(100);
    let mut writer = ArchiveWriter::new();
    let mut file = writer.encode(&writes[..60]);
    let whole = file.len();
    file.extend(writer.encode(&writes[60..]));
    for cut in whole..file.len() {
        let (read, valid) = ArchiveReader::read(&file[..cut]);
        assert_eq!(valid, whole, "cut at {cut}");
        assert_eq!(read, writes[..60]);
    }
    let mut flipped = file.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x55;
    assert_eq!(ArchiveReader::read(&flipped).1, whole);
}

#[test]
fn a_corrupt_block_leaves_no_definitions_behind() {
    let writes = sample(50);
    let mut writer = ArchiveWriter::new();
    let mut file = writer.encode(&writes);
    file.truncate(file.len() - 1);
    let (resumed, valid) = ArchiveWriter::resume(&file);
    assert_eq!(valid, 0);
    assert_eq!(resumed.strings(), 0);
}

#[test]
fn strings_beyond_the_intern_table_go_inline_and_read_back() {
    let writes: Vec<ArchivedWrite> = (0..STRINGS_MAX as u64 + 500)
        .map(|i| ArchivedWrite {
            message: format!("m{i}"),
            ..write(i, "db", "eu", State::Operational, i + 1)
        })
        .collect();
    let mut writer = ArchiveWriter::new();
    let file = writer.encode(&writes);
    assert_eq!(writer.strings(), STRINGS_MAX);
    let (read, valid) = ArchiveReader::read(&file);
    assert_eq!(valid, file.len());
    assert_eq!(read, writes);
}

#[test]
fn a_typical_write_takes_under_eight_bytes() {
    // 1,000 components x 5 regions, each change a batch of 250 writes by one node.
    let regions = [
        "eu-west",
        "eu-central",
        "us-east",
        "us-west",
        "ap-southeast",
    ];
    let writes: Vec<ArchivedWrite> = (0..50_000_u64)
        .map(|i| {
            let cell = i % 5_000;
            ArchivedWrite {
                at_ms: 1_700_000_000_000 + i * 10,
                changed_at_ms: 1_700_000_000_000 + i / 250 * 2_500,
                component: name(&format!("c{}", cell / 5)),
                region: name(regions[(cell % 5) as usize]),
                state: State::ALL[(i / 5_000 % 2) as usize],
                message: "all good".into(),
                reporter: "probe".into(),
                origin_node: Some("eu-1".into()),
                writer: [3; WRITER_LEN],
                n: 1 + i / 250,
            }
        })
        .collect();
    let mut writer = ArchiveWriter::new();
    let bytes: usize = writes.chunks(5_000).map(|c| writer.encode(c).len()).sum();
    let per_write = bytes as f64 / writes.len() as f64;
    assert!(per_write <= 8.0, "{per_write} bytes per write");
}

#[test]
fn overlong_varints_are_refused() {
    let mut input = Input {
        bytes: &[0xff; 11],
        at: 0,
    };
    assert_eq!(input.varint(), None);
    let mut max = Vec::new();
    put_varint(&mut max, u64::MAX);
    let mut input = Input { bytes: &max, at: 0 };
    assert_eq!(input.varint(), Some(u64::MAX));
}

fn arb_name() -> impl Strategy<Value = Name> {
    "[a-z0-9][a-z0-9_.-]{0,8}".prop_map(|s| name(&s))
}

fn arb_write() -> impl Strategy<Value = ArchivedWrite> {
    (
        (any::<u64>(), any::<u64>(), arb_name(), arb_name()),
        (0..5_usize, "\\PC{0,12}", "[a-z]{1,4}"),
        (
            proptest::option::of("[a-z0-9-]{1,6}"),
            prop::sample::select(vec![[1; WRITER_LEN], [2; WRITER_LEN]]),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (at_ms, changed_at_ms, component, region),
                (state, message, reporter),
                (origin_node, writer, n),
            )| ArchivedWrite {
                at_ms,
                changed_at_ms,
                component,
                region,
                state: State::ALL[state],
                message,
                reporter,
                origin_node,
                writer,
                n,
            },
        )
}

proptest! {
    #[test]
    fn encoded_writes_decode_to_the_same_writes(
        batches in prop::collection::vec(prop::collection::vec(arb_write(), 0..20), 0..5),
    ) {
        let mut writer = ArchiveWriter::new();
        let mut file = Vec::new();
        for batch in &batches {
            file.extend(writer.encode(batch));
        }
        let (read, valid) = ArchiveReader::read(&file);
        prop_assert_eq!(valid, file.len());
        prop_assert_eq!(read, batches.concat());
    }

    #[test]
    fn garbage_never_panics_and_is_never_longer_than_its_input(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let (_, valid) = ArchiveReader::read(&bytes);
        prop_assert!(valid <= bytes.len());
        let _ = ArchiveWriter::resume(&bytes);
    }

    #[test]
    fn garbage_with_a_valid_header_and_checksum_never_panics(
        payload in prop::collection::vec(any::<u8>(), 0..256),
        prefix in prop::collection::vec(arb_write(), 0..4),
    ) {
        // A block that passes the checksum exercises the payload decoder itself.
        let mut file = ArchiveWriter::new().encode(&prefix);
        let whole = file.len();
        file.extend_from_slice(&BLOCK_MAGIC.to_le_bytes());
        file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        file.extend_from_slice(&payload);
        let (read, valid) = ArchiveReader::read(&file);
        prop_assert!(valid == whole || valid == file.len());
        prop_assert!(read.len() >= prefix.len());
    }
}
