//! A connection that is plain TCP or TLS, and its read and write halves.
//!
//! Plain TCP splits into tokio's owned halves (no lock between them), so
//! the common case pays nothing for TLS support; TLS streams split through
//! `tokio::io::split`.
//!
//! Plain TCP connections and halves read and write with bare system
//! calls ([`crate::syscall`]) under tokio's readiness tracking, rather
//! than through tokio's `poll_read` and `poll_write` (vectored writes,
//! used only for output over 1 KiB in several pieces, and `read_now`'s
//! one look at the socket stay tokio's): the same behaviour
//! (a short read or write marks the socket drained, the task's budget is
//! spent), without glibc's cancellation-point bookkeeping and tokio's
//! layers in between, on the four system calls of every pooled
//! transaction. The request loop reads through
//! [`ReadHalf::poll_read_bytes`], which waits for readiness first: the
//! loop polls its idle server after every answer, and that poll costs
//! one readiness check (about 3,200 instructions fewer per TPC-B-like
//! transaction of seven statements, 270 per select-only one).

use bytes::BytesMut;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;
type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// A whole connection, before it is split.
pub enum Stream {
    Plain(TcpStream),
    /// pgsplit is the TLS server (a client connected to pgsplit).
    Accepted(Box<ServerTls>),
    /// pgsplit is the TLS client (pgsplit connected to a server).
    Connected(Box<ClientTls>),
}

/// The read half of a [`Stream`].
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    Accepted(tokio::io::ReadHalf<ServerTls>),
    Connected(tokio::io::ReadHalf<ClientTls>),
}

/// The write half of a [`Stream`].
pub enum WriteHalf {
    Plain(OwnedWriteHalf),
    Accepted(tokio::io::WriteHalf<ServerTls>),
    Connected(tokio::io::WriteHalf<ClientTls>),
}

impl Stream {
    /// Splits into halves that can be used from one task concurrently.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::Accepted(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadHalf::Accepted(r), WriteHalf::Accepted(w))
            }
            Stream::Connected(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadHalf::Connected(r), WriteHalf::Connected(w))
            }
        }
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }
}

impl ReadHalf {
    /// Reads into `buf` what has already arrived, without waiting; `None`
    /// when nothing has. Plain TCP takes one look at the socket's readiness
    /// (no task budget, no waker), which matters on every checkout.
    pub fn read_now(&mut self, buf: &mut BytesMut) -> Option<io::Result<usize>> {
        if let ReadHalf::Plain(tcp) = self {
            return match tcp.try_read_buf(buf) {
                Err(e) if would_block(&e) => None,
                other => Some(other),
            };
        }
        let mut cx = Context::from_waker(Waker::noop());
        // Uninitialised: zeroing it on every call would cost more than
        // the read.
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        let mut read = ReadBuf::uninit(&mut chunk);
        match Pin::new(self).poll_read(&mut cx, &mut read) {
            Poll::Pending => None,
            Poll::Ready(Ok(())) => {
                buf.extend_from_slice(read.filled());
                Some(Ok(read.filled().len()))
            }
            Poll::Ready(Err(e)) => Some(Err(e)),
        }
    }

    /// Reads what has arrived into the spare room of `buf`, which `room`
    /// makes (called once there is something to read on plain TCP, so a
    /// client that sent nothing holds no buffer; before the read on TLS).
    /// The request loop's read: one function, without `read_buf`'s future
    /// and `ReadBuf` layers, and on plain TCP a poll that finds nothing
    /// costs one readiness check, which registers the waker (the loop
    /// polls an idle server after every answer).
    pub fn poll_read_bytes(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        room: impl Fn(&mut BytesMut),
    ) -> Poll<io::Result<usize>> {
        if let ReadHalf::Plain(tcp) = self {
            return poll_recv(tcp.as_ref(), cx, buf, room);
        }
        room(buf);
        poll_read_spare(Pin::new(self), cx, buf)
    }
}

/// [`ReadHalf::poll_read_bytes`] on plain TCP.
fn poll_recv(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    room: impl Fn(&mut BytesMut),
) -> Poll<io::Result<usize>> {
    loop {
        // Spends the task's budget, as tokio's own reads do.
        ready!(tcp.poll_read_ready(cx))?;
        room(buf);
        if let Some(read) = try_recv(tcp, buf) {
            return Poll::Ready(read);
        }
    }
}

/// One `recv` into the spare room of `buf` ([`transfer_once`]).
fn try_recv(tcp: &TcpStream, buf: &mut BytesMut) -> Option<io::Result<usize>> {
    if buf.capacity() == buf.len() {
        buf.reserve(4096);
    }
    let fd = tcp.as_raw_fd();
    let room = buf.spare_capacity_mut();
    let want = room.len();
    let read = transfer_once(tcp, Interest::READABLE, want, || {
        crate::syscall::recv(fd, room)
    });
    if let Some(Ok(got)) = read {
        // SAFETY: the kernel initialised the `got` bytes after the length.
        unsafe { buf.set_len(buf.len() + got) };
    }
    read
}

/// Reads through `AsyncRead` into the spare room of `buf`.
fn poll_read_spare(
    rd: Pin<&mut ReadHalf>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut read = ReadBuf::uninit(buf.spare_capacity_mut());
    ready!(rd.poll_read(cx, &mut read))?;
    let got = read.filled().len();
    // SAFETY: `poll_read` initialised the `got` bytes it filled, which
    // start at the buffer's length.
    unsafe { buf.set_len(buf.len() + got) };
    Poll::Ready(Ok(got))
}

/// Reads from a plain TCP socket as tokio's `poll_read` does: a read
/// that fills less than `buf` marks the socket drained (the next poll
/// waits for readiness instead of trying a read that would only say
/// `EAGAIN`), and each read spends the task's budget.
fn poll_read_tcp(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let fd = tcp.as_raw_fd();
    // SAFETY: `recv` only writes into the unfilled part, and only the
    // bytes it reports are marked filled below.
    let room = unsafe { buf.unfilled_mut() };
    let want = room.len();
    let got = ready!(poll_transfer(tcp, cx, Interest::READABLE, want, || {
        crate::syscall::recv(fd, room)
    }))?;
    // SAFETY: the kernel initialised `got` bytes of the room.
    unsafe { buf.assume_init(got) };
    buf.advance(got);
    Poll::Ready(Ok(()))
}

/// Writes to a plain TCP socket as tokio's `poll_write` does: a write
/// that takes less than `buf` marks the socket full, and each write
/// spends the task's budget.
fn poll_write_tcp(tcp: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    let fd = tcp.as_raw_fd();
    poll_transfer(tcp, cx, Interest::WRITABLE, buf.len(), || {
        crate::syscall::send(fd, buf)
    })
}

/// [`transfer_once`] until it moves bytes or fails, waiting for
/// readiness (the waker is registered) while nothing can move; spends the
/// task's budget, as tokio's own reads and writes do.
fn poll_transfer(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    interest: Interest,
    want: usize,
    mut op: impl FnMut() -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    let budget = ready!(tokio::task::coop::poll_proceed(cx));
    loop {
        match transfer_once(tcp, interest, want, &mut op) {
            Some(Ok(moved)) => {
                budget.made_progress();
                return Poll::Ready(Ok(moved));
            }
            Some(Err(e)) => return Poll::Ready(Err(e)),
            None if interest.is_readable() => ready!(tcp.poll_read_ready(cx))?,
            None => ready!(tcp.poll_write_ready(cx))?,
        }
    }
}

/// One non-blocking transfer of up to `want` bytes by `op` in the
/// direction `interest`, under tokio's readiness: the bytes moved (0: the
/// peer closed), or `None` when nothing could move, which clears the
/// readiness. A short transfer is reported to tokio as `WouldBlock`,
/// which clears it too, as tokio's own `poll_read` and `poll_write` do
/// (the next poll waits instead of making a call that would only say
/// `EAGAIN`); that error is only the signal, so bytes moved are looked at
/// first, and it is never decoded.
fn transfer_once(
    tcp: &TcpStream,
    interest: Interest,
    want: usize,
    mut op: impl FnMut() -> io::Result<usize>,
) -> Option<io::Result<usize>> {
    let mut moved = 0;
    let result = tcp.try_io(interest, || {
        moved = op()?;
        if moved > 0 && moved < want {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(moved)
    });
    if moved > 0 {
        return Some(Ok(moved));
    }
    match result {
        Ok(closed) => Some(Ok(closed)),
        Err(e) if would_block(&e) => None,
        Err(e) => Some(Err(e)),
    }
}

/// Whether `e` says the transfer would block: `EAGAIN` from the kernel
/// compared as a number (`io::Error::kind` decodes an OS error through a
/// table on every call), or the kind a short transfer reports.
fn would_block(e: &io::Error) -> bool {
    match e.raw_os_error() {
        Some(code) => code == libc::EAGAIN,
        None => e.kind() == io::ErrorKind::WouldBlock,
    }
}

/// `AsyncRead` for a connection or read half: plain TCP through
/// [`poll_read_tcp`] (`$tcp` names the plain socket, `$as_tcp` makes it a
/// `&TcpStream`), TLS through rustls.
macro_rules! delegate_read {
    ($ty:ty, $tcp:ident => $as_tcp:expr) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain($tcp) => poll_read_tcp($as_tcp, cx, buf),
                    Self::Accepted(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Connected(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

/// `AsyncWrite` for a connection or write half, as [`delegate_read`].
macro_rules! delegate_write {
    ($ty:ty, $tcp:ident => $as_tcp:expr) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain($tcp) => poll_write_tcp($as_tcp, cx, buf),
                    Self::Accepted(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Connected(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    Self::Accepted(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    Self::Connected(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    Self::Plain(s) => s.is_write_vectored(),
                    Self::Accepted(s) => s.is_write_vectored(),
                    Self::Connected(s) => s.is_write_vectored(),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_flush(cx),
                    Self::Accepted(s) => Pin::new(s).poll_flush(cx),
                    Self::Connected(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Accepted(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Connected(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_read!(Stream, tcp => tcp);
delegate_write!(Stream, tcp => tcp);
delegate_read!(ReadHalf, tcp => tcp.as_ref());
delegate_write!(WriteHalf, tcp => tcp.as_ref());

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn would_block_is_eagain_or_the_short_transfer_kind_and_nothing_else() {
        assert!(would_block(&io::Error::from_raw_os_error(libc::EAGAIN)));
        assert!(would_block(&io::ErrorKind::WouldBlock.into()));
        assert!(!would_block(&io::Error::from_raw_os_error(
            libc::ECONNRESET
        )));
        assert!(!would_block(&io::Error::from_raw_os_error(libc::EINTR)));
        assert!(!would_block(&io::ErrorKind::BrokenPipe.into()));
    }

    /// `read_now` until it reports something (the I/O driver notes the
    /// socket's readiness while the task sleeps).
    async fn read_soon(rd: &mut ReadHalf, buf: &mut BytesMut) -> Option<io::Result<usize>> {
        for _ in 0..200 {
            if let Some(r) = rd.read_now(buf) {
                return Some(r);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        None
    }

    /// Several MiB each way at once: more than the socket buffers hold, so
    /// writes come back short and wait for room, and reads drain the
    /// socket and wait for more; every byte arrives in order, and the
    /// peer's shutdown reads as the end.
    #[tokio::test]
    async fn plain_halves_carry_a_large_stream_both_ways() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut a_rd, a_wr) = Stream::Plain(a.unwrap()).split();
        let (mut b_rd, b_wr) = Stream::Plain(b.unwrap().0).split();
        let data: Vec<u8> = (0..6u32 << 20).map(|i| (i % 251) as u8).collect();
        let send = |mut wr: WriteHalf, data: Vec<u8>| async move {
            wr.write_all(&data).await.unwrap();
            wr.shutdown().await.unwrap();
        };
        let a_sends = tokio::spawn(send(a_wr, data.clone()));
        let b_sends = tokio::spawn(send(b_wr, data.clone()));
        let (mut at_a, mut at_b) = (Vec::new(), Vec::new());
        let (ra, rb) = tokio::join!(a_rd.read_to_end(&mut at_a), b_rd.read_to_end(&mut at_b));
        assert_eq!(ra.unwrap(), data.len());
        assert_eq!(rb.unwrap(), data.len());
        assert!(at_a == data && at_b == data, "bytes lost or reordered");
        a_sends.await.unwrap();
        b_sends.await.unwrap();
    }

    /// The request loop's read: a stream larger than the socket buffers
    /// arrives whole and in order through small rooms made only when the
    /// socket is readable, a poll with nothing to read stays pending (and
    /// is woken when data comes), and the peer's close reads as 0.
    #[tokio::test]
    async fn poll_read_bytes_reads_a_stream_in_order_and_then_the_close() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut rd, _wr) = Stream::Plain(a.unwrap()).split();
        let mut peer = b.unwrap().0;
        let rooms = AtomicUsize::new(0);
        let room = |buf: &mut BytesMut| {
            rooms.fetch_add(1, Ordering::Relaxed);
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(1024);
            }
        };
        let mut buf = BytesMut::new();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(rd.poll_read_bytes(&mut cx, &mut buf, room).is_pending());
        assert_eq!(rooms.load(Ordering::Relaxed), 0, "no room before data");
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 253) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            peer.write_all(&sent).await.unwrap();
            peer.shutdown().await.unwrap();
        });
        loop {
            let n = std::future::poll_fn(|cx| rd.poll_read_bytes(cx, &mut buf, room))
                .await
                .unwrap();
            if n == 0 {
                break;
            }
        }
        writer.await.unwrap();
        assert!(buf[..] == data[..], "bytes lost or reordered");
        assert!(rooms.load(Ordering::Relaxed) > 1);
    }

    #[tokio::test]
    async fn read_now_takes_what_arrived_and_tells_nothing_from_closed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut peer, _) = accepted.unwrap();
        let (mut rd, _wr) = Stream::Plain(client.unwrap()).split();
        let mut buf = BytesMut::new();
        assert!(rd.read_now(&mut buf).is_none(), "nothing arrived yet");
        peer.write_all(b"S\0\0\0\x04").await.unwrap();
        let got = read_soon(&mut rd, &mut buf).await;
        assert_eq!(got.map(|r| r.unwrap()), Some(5));
        assert_eq!(&buf[..], b"S\0\0\0\x04");
        drop(peer);
        let closed = read_soon(&mut rd, &mut buf).await;
        assert_eq!(closed.map(|r| r.unwrap()), Some(0), "closed by the peer");
    }
}
