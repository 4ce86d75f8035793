//! Cost of read/write classification per statement, for a realistic mix
//! of what applications send (ORM-style selects with joins, pgbench,
//! inserts and updates, transaction control, a CTE, comments and strings).
//! Target: under 1 µs per typical statement.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgsplit::route::classify::Classifier;
use std::hint::black_box;

const MIX: &[&str] = &[
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
    "BEGIN",
    "COMMIT",
    "SELECT \"users\".\"id\", \"users\".\"email\", \"users\".\"created_at\" FROM \"users\" \
     INNER JOIN \"memberships\" ON \"memberships\".\"user_id\" = \"users\".\"id\" \
     WHERE \"memberships\".\"org_id\" = $1 AND \"users\".\"deleted_at\" IS NULL \
     ORDER BY \"users\".\"created_at\" DESC LIMIT $2 OFFSET $3",
    "/* app:checkout */ SELECT o.id, sum(li.qty * li.price) FROM orders o JOIN line_items li \
     ON li.order_id = o.id WHERE o.customer_id = $1 AND o.status = 'open' GROUP BY o.id",
    "WITH recent AS (SELECT * FROM events WHERE ts > now() - interval '1 hour') \
     SELECT kind, count(*) FROM recent GROUP BY kind",
    "SELECT * FROM jobs WHERE state = 'ready' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
    "SELECT nextval('orders_id_seq')",
];

/// What pgbench's TPC-B-like script sends most, as simple-protocol text.
const TPCB_UPDATE: &str =
    "UPDATE pgbench_accounts SET abalance = abalance + -4146 WHERE aid = 380776;";

fn bench(c: &mut Criterion) {
    let classifier = Classifier::new(["audit.log_event"]);
    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Elements(MIX.len() as u64));
    g.bench_function("mix of 10 statements", |b| {
        b.iter(|| {
            for sql in MIX {
                black_box(classifier.classify(black_box(sql), true));
            }
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("pgbench select", |b| {
        b.iter(|| black_box(classifier.classify(black_box(MIX[0]), true)))
    });
    g.bench_function("pgbench TPC-B-like update, simple protocol", |b| {
        b.iter(|| black_box(classifier.classify(black_box(TPCB_UPDATE), true)))
    });
    g.bench_function("ORM select with joins", |b| {
        b.iter(|| black_box(classifier.classify(black_box(MIX[5]), true)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
