//! Memory per component once loaded: builds documents of 1,000 components × 5 regions and
//! reports the resident-set growth per component (Linux /proc; prints nothing elsewhere).
//!
//! Run: `cargo bench -p statusmesh-crdt --bench memory`

use statusmesh_crdt::{ActorId, Name, Observation, Replica, ServiceDoc, State, StatusWrite};

const REGIONS: [&str; 5] = ["eu-west", "eu-central", "us-east", "us-west", "ap-southeast"];
const COMPONENTS: usize = 1_000;
const SERVICES: usize = 10;

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // Build the documents on a writer, save them, and measure loading on a fresh replica:
    // "once loaded" is what a restarted node holds.
    let mut writer = Replica::new("writer", ActorId::from(vec![1; 16]));
    let mut saved = Vec::new();
    for s in 0..SERVICES {
        let service = format!("svc{s}");
        let writes: Vec<StatusWrite> = (0..COMPONENTS)
            .flat_map(|c| {
                REGIONS.iter().map(move |r| {
                    StatusWrite::parse(
                        &format!("svc{s}"),
                        &format!("c{c}"),
                        r,
                        Observation {
                            state: State::Operational,
                            message: "all good".into(),
                            reporter: "probe".into(),
                            observed_at_ms: 1,
                            ttl_ms: 60_000,
                        },
                    )
                    .expect("valid")
                })
            })
            .collect();
        for chunk in writes.chunks(500) {
            writer.write_status_batch(1, chunk).expect("batch");
        }
        let name = Name::parse("service", &service).expect("name");
        saved.push((name.clone(), writer.doc(&name).expect("doc").save()));
    }
    drop(writer);
    let Some(before) = rss_kib() else {
        println!("memory: /proc/self/status not available; nothing measured");
        return;
    };
    let docs: Vec<ServiceDoc> = saved
        .iter()
        .map(|(name, bytes)| ServiceDoc::load(name.clone(), bytes, ActorId::from(vec![2; 16])).expect("load"))
        .collect();
    let after = rss_kib().unwrap_or(before);
    let components = (SERVICES * COMPONENTS) as f64;
    let per_component = (after.saturating_sub(before) as f64 * 1024.0) / components;
    println!(
        "memory: {} services x {} components x {} regions loaded: RSS +{} KiB, {:.0} bytes per component (saved form {:.0} bytes per component)",
        SERVICES,
        COMPONENTS,
        REGIONS.len(),
        after.saturating_sub(before),
        per_component,
        saved.iter().map(|(_, b)| b.len()).sum::<usize>() as f64 / components,
    );
    std::hint::black_box(docs);
}
