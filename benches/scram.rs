//! CPU of the client side of one SCRAM-SHA-256 login to a server, as
//! pgsplit runs it whenever a pool opens a server connection (pool growth,
//! a failover, `server_lifetime`, health probes): postgres-protocol's
//! client, which derives the keys on every login; pgsplit's client on a
//! cache miss (the first login for a password, salt and iteration count);
//! and on a cache hit, every later login.

use criterion::{criterion_group, criterion_main, Criterion};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use std::hint::black_box;

use pgsplit::wire::scram_client::{keys, Keys, Login, Salt};

const PASSWORD: &str = "app-secret";
const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";

/// A server-first-message answering `client_first` (4,096 iterations, as
/// PostgreSQL's default).
fn server_first(client_first: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(client_first).expect("ASCII");
    let nonce = text.split_once(",r=").expect("a nonce").1;
    format!("r={nonce}server-part,s={SALT},i=4096").into_bytes()
}

/// pgsplit's side of one login, with `keys_for` supplying the keys;
/// returns the length of the client-final-message.
fn login(keys_for: impl Fn(&Salt) -> Keys) -> usize {
    let mut login = Login::new();
    let salt = login
        .server_first(&server_first(login.client_first()))
        .expect("a valid server-first");
    login
        .client_final(&keys_for(&salt))
        .expect("in order")
        .len()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut g = c.benchmark_group("scram server login");
    g.bench_function("postgres-protocol (keys derived every login)", |b| {
        b.iter(|| {
            let mut s = ScramSha256::new(PASSWORD.as_bytes(), ChannelBinding::unsupported());
            let first = server_first(s.message());
            s.update(&first).expect("a valid server-first");
            black_box(s.message().len())
        })
    });
    g.bench_function("pgsplit, cache miss (first login)", |b| {
        b.iter(|| black_box(login(|salt| Keys::derive(black_box(PASSWORD), salt))))
    });
    g.bench_function("pgsplit, cache hit (every later login)", |b| {
        b.iter(|| {
            black_box(login(|salt| {
                runtime
                    .block_on(keys(black_box(PASSWORD), salt))
                    .expect("derived")
            }))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
