//! criterion benchmarks of the crdt layer: local writes (one by one and group-committed),
//! remote apply (one by one and batched), events after a cursor, loading a large document.
//!
//! Run: `cargo bench -p statusmesh-crdt --bench crdt`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use statusmesh_crdt::{ActorId, Name, Observation, Replica, ServiceDoc, State, StatusWrite};

mod common;
use common::REGIONS;

fn write(component: usize, region: usize, n: u64) -> StatusWrite {
    StatusWrite::parse(
        "api",
        &format!("c{component}"),
        REGIONS[region % REGIONS.len()],
        Observation {
            state: State::ALL[(n % 5) as usize],
            message: format!("m{}", n % 7),
            reporter: "probe".into(),
            observed_at_ms: n,
            ttl_ms: 60_000,
        },
    )
    .expect("valid write")
}

fn replica(id: u8) -> Replica {
    Replica::new(&format!("n{id}"), ActorId::from(vec![id; 16]))
}

/// `count` changes made on one replica, as bytes for another.
fn remote_changes(count: usize) -> Vec<Vec<u8>> {
    let mut source = replica(9);
    (0..count)
        .map(|i| {
            let w = write(i % 200, i, i as u64 + 1);
            source
                .write_status(i as u64 + 1, &w)
                .expect("write")
                .change
                .expect("a change")
        })
        .collect()
}

fn local_writes(c: &mut Criterion) {
    let mut group = c.benchmark_group("local_write");
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_change_per_write", |b| {
        let mut r = replica(1);
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            let w = write((n % 1000) as usize, n as usize, n);
            black_box(r.write_status(n, &w).expect("write"));
        });
    });
    for batch in [100usize, 1000] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("group_commit_{batch}"), |b| {
            let mut r = replica(1);
            let mut n = 0u64;
            b.iter(|| {
                let writes: Vec<StatusWrite> = (0..batch)
                    .map(|i| {
                        n += 1;
                        write(i, i / 1000, n)
                    })
                    .collect();
                black_box(r.write_status_batch(n, &writes).expect("batch"));
            });
        });
    }
    group.finish();
}

fn remote_apply(c: &mut Criterion) {
    let changes = remote_changes(1000);
    let mut group = c.benchmark_group("remote_apply");
    group.throughput(Throughput::Elements(changes.len() as u64));
    group.sample_size(20);
    group.bench_function("one_by_one_1000", |b| {
        b.iter_batched(
            || replica(2),
            |mut r| {
                for change in &changes {
                    black_box(
                        r.apply_remote("api", std::slice::from_ref(change))
                            .expect("apply"),
                    );
                }
            },
            BatchSize::LargeInput,
        );
    });
    group.bench_function("batches_of_100_1000", |b| {
        b.iter_batched(
            || replica(2),
            |mut r| {
                for batch in changes.chunks(100) {
                    black_box(r.apply_remote("api", batch).expect("apply"));
                }
            },
            BatchSize::LargeInput,
        );
    });
    // Group-committed changes carry many writes each: the figure that counts for a mesh
    // under load is observations applied per second.
    let mut source = replica(9);
    let grouped: Vec<Vec<u8>> = (0..10)
        .map(|k| {
            let writes: Vec<StatusWrite> = (0..100)
                .map(|i| write(i, k, (k * 100 + i) as u64 + 1))
                .collect();
            source
                .write_status_batch(k as u64 + 1, &writes)
                .expect("batch")[0]
                .change
                .clone()
                .expect("change")
        })
        .collect();
    group.throughput(Throughput::Elements(1000));
    group.bench_function("group_committed_10x100_observations", |b| {
        b.iter_batched(
            || replica(2),
            |mut r| black_box(r.apply_remote("api", &grouped).expect("apply")),
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

fn events_after_cursor(c: &mut Criterion) {
    let mut r = replica(1);
    for i in 0..1000u64 {
        r.write_status(i + 1, &write(i as usize % 200, i as usize, i + 1))
            .expect("write");
    }
    let cursor = r.cursor();
    for i in 1000..1100u64 {
        r.write_status(i + 1, &write(i as usize % 200, i as usize, i + 1))
            .expect("write");
    }
    let mut group = c.benchmark_group("events_after_cursor");
    group.bench_function("100_changes_behind_in_1100", |b| {
        b.iter(|| black_box(r.events_since(&cursor).expect("known cursor")));
    });
    group.finish();
}

fn load(c: &mut Criterion) {
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    for count in [10_000usize, 100_000] {
        let mut r = replica(1);
        for i in 0..count {
            r.write_status(i as u64 + 1, &write(i % 200, i, i as u64 + 1))
                .expect("write");
        }
        let api = Name::parse("service", "api").expect("name");
        let bytes = r.doc(&api).expect("doc").save();
        group.bench_function(
            format!("validated_{count}_changes_{}_bytes", bytes.len()),
            |b| {
                b.iter(|| {
                    black_box(
                        ServiceDoc::load(api.clone(), &bytes, ActorId::from(vec![3; 16]))
                            .expect("load"),
                    )
                });
            },
        );
        group.bench_function(
            format!("trusted_{count}_changes_{}_bytes", bytes.len()),
            |b| {
                b.iter(|| {
                    black_box(
                        ServiceDoc::load_trusted(api.clone(), &bytes, ActorId::from(vec![3; 16]))
                            .expect("load"),
                    )
                });
            },
        );
    }
    group.finish();
}

criterion_group!(
    benches,
    local_writes,
    remote_apply,
    events_after_cursor,
    load
);
criterion_main!(benches);
