//! Integration tests: they start real `statusmesh` processes on loopback.
//!
//! One test binary (ripgrep's layout) over a harness that picks free ports, waits on
//! conditions with bounded timeouts and kills only the processes it started.

mod alertmanager;
mod badges;
mod bench_sse;
mod browser;
mod chaos;
mod chaos_net;
mod chaos_probes;
mod check_config;
mod client;
mod conformance;
mod contract;
mod cors;
mod durability;
mod epoch;
mod errors;
mod feeds;
mod flags;
mod harness;
mod https;
mod join;
mod mesh;
mod negotiation;
mod operator;
mod page;
mod probes;
mod prometheus;
mod secrets;
mod security;
mod slow_reader;
mod statuspage;
mod tls;
mod tls_reload;
mod transitions;
mod upgrade;
mod webhooks;
