//! Spare buffers for clients that become busy again.
//!
//! An idle client holds no buffer (memory per idle client is a promise),
//! so a client gives its read buffer up after every transaction and needs
//! one again for the next: with the allocator alone that is a 4 KiB
//! allocation and free per transaction. Buffers given up are kept here
//! instead, per worker thread and at most `MAX_SPARE` of them, for the
//! next client on that thread. The bound keeps the memory this holds
//! fixed however many clients there are.
//!
//! A buffer kept here may share its allocation with messages still queued
//! elsewhere (`BytesMut::split_to().freeze()`); only its own spare room is
//! ever written, so handing it to another client is safe, and `reserve`
//! reclaims the whole allocation once those messages are gone.

use bytes::BytesMut;
use std::cell::RefCell;

/// Buffers kept per thread.
const MAX_SPARE: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `min` bytes: a spare one when
/// this thread has one (grown to `fresh` bytes when it has less than
/// `min`), else a new one of `fresh` bytes.
pub fn take(min: usize, fresh: usize) -> BytesMut {
    let spare = SPARE.with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop()));
    match spare {
        Some(mut buf) => {
            if buf.capacity() - buf.len() < min {
                buf.reserve(fresh.max(min));
            }
            buf
        }
        None => BytesMut::with_capacity(fresh.max(min)),
    }
}

/// Gives up an empty buffer; kept for reuse unless enough are kept.
/// A buffer with content, or without room, is simply dropped.
pub fn give(buf: BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    SPARE.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if s.len() < MAX_SPARE {
                s.push(buf);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_taken_again_on_the_same_thread() {
        let mut buf = take(512, 4096);
        assert!(buf.capacity() >= 4096);
        let addr = buf.as_ptr() as usize;
        buf.extend_from_slice(b"Q\0\0\0\x05");
        let message = buf.split_to(5).freeze();
        give(buf);
        let again = take(512, 4096);
        assert!(again.is_empty() && again.capacity() >= 512);
        assert_eq!(
            message.as_ref(),
            b"Q\0\0\0\x05",
            "queued messages keep their bytes"
        );
        assert!(
            again.as_ptr() as usize > addr,
            "the spare room of the given buffer is reused"
        );
    }

    #[test]
    fn a_spare_short_of_room_is_grown_and_a_new_one_is_fresh_sized() {
        std::thread::spawn(|| {
            assert!(take(16, 4096).capacity() >= 4096, "no spare: a fresh one");
            let mut buf = BytesMut::with_capacity(600);
            buf.extend_from_slice(&[0; 300]);
            let _sent = buf.split_to(300).freeze();
            give(buf);
            let grown = take(512, 4096);
            assert!(
                grown.capacity() >= 4096,
                "300 bytes of room left, 512 asked"
            );
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn holds_a_bounded_number_and_drops_non_empty_ones() {
        std::thread::spawn(|| {
            for _ in 0..MAX_SPARE + 10 {
                give(BytesMut::with_capacity(64));
            }
            give(BytesMut::from(&b"still in use"[..]));
            let kept = SPARE.with(|s| s.borrow().len());
            assert_eq!(kept, MAX_SPARE);
        })
        .join()
        .expect("thread");
    }
}
