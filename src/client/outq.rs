//! A queue of whole or partial messages waiting to be written to one
//! socket. Messages stay the `Bytes` they were cut from the read buffer as;
//! a write sends as many of them as one syscall takes.

use bytes::{Buf, Bytes};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Most chunks handed to one `write_vectored` call.
const MAX_SLICES: usize = 32;

/// Output up to this size in several chunks is joined into one plain write.
const COALESCE_BYTES: usize = 1024;

thread_local! {
    /// Room to join small chunks in, kept per thread: a buffer on the
    /// stack would be zeroed (a 1 KiB memset) on every joined write.
    static JOINED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Pending output for one socket.
#[derive(Debug, Default)]
pub struct OutQueue {
    chunks: VecDeque<Bytes>,
    len: usize,
    /// Chunks ever queued: tells whether anything was queued since a mark.
    pushed: u64,
}

impl OutQueue {
    /// Queues `bytes` after what is already queued.
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.pushed += 1;
            self.chunks.push_back(bytes);
        }
    }

    /// Chunks ever queued.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes once (cancel-safe: nothing is lost if the future is dropped).
    pub async fn write_some<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<()> {
        std::future::poll_fn(|cx| self.poll_write_some(cx, w)).await
    }

    /// Writes what the socket takes right now, without waiting. Called
    /// right after queuing, it saves a trip through the event loop per
    /// message batch; whatever is left is written when the socket is ready.
    pub fn write_now<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_write_some(&mut cx, w) {
            Poll::Ready(result) => result,
            Poll::Pending => Ok(()),
        }
    }

    /// One write. A single chunk goes out with a plain write (`send`), and
    /// a few small chunks are copied into one stack buffer first: on Linux
    /// `writev` costs more in the kernel than copying a few hundred bytes
    /// here, and both are on every transaction's path. Larger output stays
    /// one vectored write. The I/O slices are built inside each poll, so the
    /// futures that call this stay a few words large.
    pub fn poll_write_some<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> Poll<std::io::Result<()>> {
        let written = match self.chunks.len() {
            0 => return Poll::Ready(Ok(())),
            1 => std::pin::Pin::new(&mut *w).poll_write(cx, &self.chunks[0]),
            _ if self.len <= COALESCE_BYTES => JOINED.with_borrow_mut(|joined| {
                joined.clear();
                for chunk in &self.chunks {
                    joined.extend_from_slice(chunk);
                }
                std::pin::Pin::new(&mut *w).poll_write(cx, joined)
            }),
            n => {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let n = n.min(MAX_SLICES);
                for (slot, chunk) in slices.iter_mut().zip(self.chunks.iter()) {
                    *slot = IoSlice::new(chunk);
                }
                std::pin::Pin::new(&mut *w).poll_write_vectored(cx, &slices[..n])
            }
        };
        let written = match written {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        if written == 0 && self.len > 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        self.advance(written);
        Poll::Ready(Ok(()))
    }

    /// Writes everything queued.
    pub async fn write_all<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<()> {
        while !self.is_empty() {
            self.write_some(w).await?;
        }
        w.flush().await
    }

    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if n >= front.len() {
                n -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_everything_in_order() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abc"));
        q.push(Bytes::new());
        q.push(Bytes::from_static(b"defg"));
        assert_eq!(q.len(), 7);
        let mut out = Vec::new();
        q.write_all(&mut out).await.unwrap();
        assert_eq!(out, b"abcdefg");
        assert!(q.is_empty());
    }

    #[test]
    fn write_now_writes_without_waiting() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abc"));
        let mut out = Vec::new();
        q.write_now(&mut out).unwrap();
        assert_eq!(out, b"abc");
        assert!(q.is_empty());
    }

    #[test]
    fn partial_advance_keeps_the_rest() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abc"));
        q.push(Bytes::from_static(b"de"));
        q.advance(4);
        assert_eq!(q.len(), 1);
        assert_eq!(&q.chunks[0][..], b"e");
    }

    /// Records each write call: plain or vectored, and how many bytes.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<(&'static str, usize)>,
        out: Vec<u8>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.calls.push(("write", buf.len()));
            self.out.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let n = bufs.iter().map(|b| b.len()).sum();
            self.calls.push(("writev", n));
            for b in bufs {
                self.out.extend_from_slice(b);
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn small_chunks_go_out_in_one_plain_write() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"B-rewritten"));
        q.push(Bytes::from_static(b"DES"));
        let mut w = Recorder::default();
        q.write_now(&mut w).unwrap();
        assert_eq!(w.calls, vec![("write", 14)]);
        assert_eq!(w.out, b"B-rewrittenDES");
        assert!(q.is_empty());
    }

    #[test]
    fn large_output_stays_one_vectored_write() {
        let mut q = OutQueue::default();
        q.push(Bytes::from(vec![b'a'; COALESCE_BYTES]));
        q.push(Bytes::from_static(b"b"));
        let mut w = Recorder::default();
        q.write_now(&mut w).unwrap();
        assert_eq!(w.calls, vec![("writev", COALESCE_BYTES + 1)]);
        assert!(q.is_empty());
    }
}
