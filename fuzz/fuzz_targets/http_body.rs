#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| statusmesh_node::fuzz::http_body(data));
