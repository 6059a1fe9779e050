#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| statusmesh_crdt::fuzz::cursor(data));
