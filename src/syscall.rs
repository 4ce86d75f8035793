//! `recv(2)` and `send(2)` made straight to the kernel, and
//! `sched_yield(2)` for the event loop about to sleep
//! (`proxy.yield_before_sleep`).
//!
//! glibc's `recv` and `send` are thread-cancellation points: in a process
//! with more than one thread (pgsplit has tokio's blocking pool and the
//! config watcher) each call switches asynchronous cancellation on and off
//! around the system call, two atomic compare-and-swaps on the thread's
//! cancel state. pgsplit never cancels threads, and a pooled transaction
//! makes four of these calls on its path, so they go through `syscall(2)`,
//! which is no cancellation point. Measured with `perf` at 10 clients:
//! the two cancellation helpers took 0.15 µs per transaction, about 4% of
//! pgsplit's user time.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

/// Reads what has arrived on the non-blocking socket `fd` into `buf`,
/// at most its length; 0 means the peer closed. `EINTR` is retried.
pub fn recv(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    retried(|| {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes, which is
        // all the kernel writes; the address arguments are null, as
        // `recv(2)` passes them.
        unsafe {
            libc::syscall(
                libc::SYS_recvfrom,
                fd,
                buf.as_mut_ptr(),
                buf.len(),
                0,
                std::ptr::null_mut::<libc::sockaddr>(),
                std::ptr::null_mut::<libc::socklen_t>(),
            )
        }
    })
}

/// Writes as much of `buf` as the non-blocking socket `fd` takes now,
/// without raising SIGPIPE when the peer has gone. `EINTR` is retried.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    retried(|| {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes; the
        // address arguments are null, as `send(2)` passes them.
        unsafe {
            libc::syscall(
                libc::SYS_sendto,
                fd,
                buf.as_ptr(),
                buf.len(),
                libc::MSG_NOSIGNAL,
                std::ptr::null::<libc::sockaddr>(),
                0 as libc::socklen_t,
            )
        }
    })
}

/// Runs the system call `call` until a signal does not interrupt it;
/// its return value as a count, or the error in `errno`.
fn retried(mut call: impl FnMut() -> libc::c_long) -> io::Result<usize> {
    loop {
        match usize::try_from(call()) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(e);
                }
            }
        }
    }
}

/// Lets other threads waiting for this CPU run first (`sched_yield(2)`);
/// returns at once when none waits.
pub fn yield_cpu() {
    // SAFETY: sched_yield takes no arguments and cannot fail on Linux.
    unsafe {
        libc::sched_yield();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn send_and_recv_move_bytes_and_report_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut buf = [MaybeUninit::<u8>::uninit(); 16];
        let nothing = recv(server.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(nothing.kind(), io::ErrorKind::WouldBlock);
        client.write_all(b"hello").unwrap();
        let mut got = 0;
        for _ in 0..100 {
            match recv(server.as_raw_fd(), &mut buf) {
                Ok(n) => {
                    got = n;
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        assert_eq!(got, 5);
        // SAFETY: the kernel wrote the first 5 bytes.
        let bytes: Vec<u8> = buf[..5]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        assert_eq!(bytes, b"hello");
        assert_eq!(send(server.as_raw_fd(), b"back").unwrap(), 4);
        drop(client);
        // Writing to a socket whose peer has gone reports an error (EPIPE or
        // ECONNRESET) instead of killing the process with SIGPIPE.
        let mut failed = false;
        for _ in 0..100 {
            if send(server.as_raw_fd(), b"more").is_err() {
                failed = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(failed, "send to a closed peer never failed");
        assert!(recv(-1, &mut buf).is_err(), "a bad descriptor is an error");
    }
}
