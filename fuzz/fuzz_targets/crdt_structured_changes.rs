#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| statusmesh_crdt::fuzz::structured_changes(data));
