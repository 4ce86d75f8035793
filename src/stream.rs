//! A connection that is plain TCP or TLS, and its read and write halves.
//!
//! Plain TCP splits into tokio's owned halves (no lock between them), so
//! the common case pays nothing for TLS support; TLS streams split through
//! `tokio::io::split`.

use bytes::BytesMut;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
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
}

macro_rules! delegate_read {
    ($ty:ty) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Accepted(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Connected(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($ty:ty) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
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

delegate_read!(Stream);
delegate_write!(Stream);
delegate_read!(ReadHalf);
delegate_write!(WriteHalf);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

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
