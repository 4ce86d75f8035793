//! Micro-benchmarks of the forwarding hot path: cutting whole client
//! messages off a read buffer (with the Sync bookkeeping the session does),
//! and walking a server's result stream to its ReadyForQuery.

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgsplit::client::tracker::Tracker;
use pgsplit::wire::frame::peek_header;
use std::hint::black_box;

fn message(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    buf.put_u8(tag);
    buf.put_i32(body.len() as i32 + 4);
    buf.put_slice(body);
}

/// 100 pipelined Bind/Execute/Sync triples, as a driver sends them.
fn client_pipeline() -> BytesMut {
    let mut b = BytesMut::new();
    for _ in 0..100 {
        message(
            &mut b,
            b'B',
            b"\0s1\0\0\x01\0\x01\0\x01\0\0\0\x04\0\0\0\x2a\0\x01\0\x01",
        );
        message(&mut b, b'E', b"\0\0\0\0\0");
        message(&mut b, b'S', b"");
    }
    b
}

/// A result of 1000 small rows and its ReadyForQuery.
fn server_result() -> BytesMut {
    let mut b = BytesMut::new();
    message(
        &mut b,
        b'T',
        b"\0\x01id\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
    );
    for i in 0..1000u32 {
        let mut row = vec![0, 1, 0, 0, 0, 4];
        row.extend_from_slice(&i.to_be_bytes());
        message(&mut b, b'D', &row);
    }
    message(&mut b, b'C', b"SELECT 1000\0");
    message(&mut b, b'Z', b"I");
    b
}

fn bench(c: &mut Criterion) {
    let pipeline = client_pipeline();
    let mut group = c.benchmark_group("client_messages");
    group.throughput(Throughput::Elements(300));
    group.bench_function("cut_300_messages_with_sync_tracking", |bench| {
        bench.iter(|| {
            let mut buf = pipeline.clone();
            let mut tracker = Tracker::default();
            let mut ready = 0;
            while let Ok(Some(h)) = peek_header(&buf[ready..], 1 << 26) {
                tracker.client_message(h.tag, &buf[ready + 5..ready + h.total_len]);
                ready += h.total_len;
            }
            // The server's answers, so the tracker does not grow.
            for _ in 0..100 {
                for tag in [b'2', b'D', b'C', b'Z'] {
                    tracker.server_message(tag);
                }
            }
            let batch = buf.split_to(ready).freeze();
            black_box((batch, tracker.is_idle()))
        })
    });
    group.finish();

    let result = server_result();
    let mut group = c.benchmark_group("server_messages");
    group.throughput(Throughput::Bytes(result.len() as u64));
    group.bench_function("walk_1000_rows_to_ready_for_query", |bench| {
        bench.iter(|| {
            let buf = black_box(&result[..]);
            let mut off = 0;
            let mut status = 0;
            while let Ok(Some(h)) = peek_header(&buf[off..], usize::MAX) {
                if h.tag == b'Z' {
                    status = buf[off + 5];
                }
                off += h.total_len;
            }
            black_box((off, status))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
