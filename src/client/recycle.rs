//! A boxed future whose memory is reused by the next one.
//!
//! A request that must wait for a server runs its routing as a boxed
//! future, so that an idle client's task does not carry that future's
//! space. When clients outnumber servers nearly every request waits, and
//! some 30 of those boxes are alive at once (50 clients on 20 servers);
//! glibc's per-thread cache keeps only 7 blocks of a size, so most of
//! their allocations and frees took its slow path: about 300 instructions
//! per transaction (callgrind, select-only, 50 clients: 10,129 against
//! 9,831 with a deeper cache). Blocks freed here are kept per thread, at
//! most `MAX_KEPT` of them, for the next wait on that thread; the bound
//! keeps what this holds fixed however many clients there are.
//!
//! A future larger than a block (or with a stricter alignment) is boxed
//! as usual.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// The one size of block kept: room for the route future (about 440
/// bytes) with some to spare.
const BLOCK: Layout = match Layout::from_size_align(1024, 16) {
    Ok(layout) => layout,
    Err(_) => panic!("a valid layout"),
};

/// Blocks kept per thread.
const MAX_KEPT: usize = 256;

/// The blocks of one thread, given back to the allocator when the thread
/// ends.
struct Kept(Vec<NonNull<u8>>);

impl Drop for Kept {
    fn drop(&mut self) {
        for block in self.0.drain(..) {
            // SAFETY: every kept block was allocated with `BLOCK` and is
            // owned by nobody else.
            unsafe { dealloc(block.as_ptr(), BLOCK) };
        }
    }
}

thread_local! {
    static KEPT: RefCell<Kept> = const { RefCell::new(Kept(Vec::new())) };
}

/// A future on the heap, in a reused block when it fits one.
pub enum Recycled<F> {
    /// In a block of `BLOCK` layout, given back on drop.
    Kept(NonNull<F>),
    /// Too large for a block.
    Boxed(Pin<Box<F>>),
}

// SAFETY: `Kept` owns its future exactly as a `Box` would; the block is
// plain memory that any thread may free or keep.
unsafe impl<F: Send> Send for Recycled<F> {}
// SAFETY: as for `Send`: shared access only reaches the future itself.
unsafe impl<F: Sync> Sync for Recycled<F> {}

/// The future never moves once placed: moving the handle moves a pointer.
impl<F> Unpin for Recycled<F> {}

impl<F: Future> Recycled<F> {
    /// Places `future` in a kept block of this thread (or a new one) when
    /// it fits one, else in a box.
    pub fn new(future: F) -> Self {
        let layout = Layout::new::<F>();
        if layout.size() == 0 || layout.size() > BLOCK.size() || layout.align() > BLOCK.align() {
            return Recycled::Boxed(Box::pin(future));
        }
        let block = take_block().cast::<F>();
        // SAFETY: the block is unused, large enough and aligned for `F`.
        unsafe { block.as_ptr().write(future) };
        Recycled::Kept(block)
    }
}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.get_mut() {
            // SAFETY: the future lives in its block until dropped there;
            // it is never moved out.
            Recycled::Kept(future) => unsafe { Pin::new_unchecked(future.as_mut()) }.poll(cx),
            Recycled::Boxed(future) => future.as_mut().poll(cx),
        }
    }
}

impl<F> Drop for Recycled<F> {
    fn drop(&mut self) {
        if let Recycled::Kept(future) = *self {
            // SAFETY: the future was written to the block in `new` and is
            // dropped once, here; then nothing refers to the block.
            unsafe { future.as_ptr().drop_in_place() };
            give_block(future.cast());
        }
    }
}

/// A kept block of this thread, or a new one.
fn take_block() -> NonNull<u8> {
    let kept = KEPT.with(|k| k.try_borrow_mut().ok().and_then(|mut k| k.0.pop()));
    kept.unwrap_or_else(|| {
        // SAFETY: `BLOCK` has a non-zero size.
        let block = unsafe { alloc(BLOCK) };
        NonNull::new(block).unwrap_or_else(|| handle_alloc_error(BLOCK))
    })
}

/// Keeps a block for the next future, or frees it when enough are kept.
fn give_block(block: NonNull<u8>) {
    let kept = KEPT.with(|k| match k.try_borrow_mut() {
        Ok(mut k) if k.0.len() < MAX_KEPT => {
            k.0.push(block);
            true
        }
        _ => false,
    });
    if !kept {
        // SAFETY: the block was allocated with `BLOCK` and is free.
        unsafe { dealloc(block.as_ptr(), BLOCK) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn kept() -> usize {
        KEPT.with(|k| k.borrow().0.len())
    }

    fn address<F>(r: &Recycled<F>) -> usize {
        match r {
            Recycled::Kept(p) => p.as_ptr() as usize,
            Recycled::Boxed(b) => &**b as *const F as usize,
        }
    }

    #[tokio::test]
    async fn a_future_runs_to_its_output_and_its_block_serves_the_next() {
        let first = Recycled::new(async { 7 });
        assert!(matches!(first, Recycled::Kept(_)));
        let at = address(&first);
        assert_eq!(first.await, 7);
        let second = Recycled::new(async { "again" });
        assert_eq!(address(&second), at, "the freed block is reused");
        assert_eq!(second.await, "again");
    }

    #[tokio::test]
    async fn a_future_dropped_unfinished_is_dropped_in_its_block() {
        let guard = Rc::new(());
        let held = guard.clone();
        let waiting = Recycled::new(async move {
            let _held = held;
            std::future::pending::<()>().await;
        });
        assert_eq!(Rc::strong_count(&guard), 2);
        drop(waiting);
        assert_eq!(
            Rc::strong_count(&guard),
            1,
            "what the future held is dropped"
        );
    }

    #[tokio::test]
    async fn a_future_larger_than_a_block_is_boxed() {
        let big = [1u8; 2048];
        let future =
            Recycled::new(async move { big.iter().map(|&b| usize::from(b)).sum::<usize>() });
        assert!(matches!(future, Recycled::Boxed(_)));
        assert_eq!(future.await, 2048);
    }

    #[test]
    fn a_thread_keeps_at_most_max_kept_blocks() {
        let many: Vec<_> = (0..MAX_KEPT + 10)
            .map(|i| Recycled::new(async move { i }))
            .collect();
        drop(many);
        assert_eq!(kept(), MAX_KEPT);
        let one = Recycled::new(async {});
        assert_eq!(kept(), MAX_KEPT - 1, "a new future takes a kept block");
        drop(one);
        assert_eq!(kept(), MAX_KEPT);
    }
}
