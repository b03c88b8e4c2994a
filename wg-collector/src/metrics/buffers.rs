//! Page buffers kept from one scrape for the next. A page at 10k peers is 17 MB in pieces
//! of 0.1-2 MB, one per family. Freed, they went back to the kernel (glibc's mmap threshold
//! was 128 KiB) and every scrape faulted its whole page in afresh; freed into the heap, a
//! piece's memory could be trimmed or split by whatever is allocated next. Each piece goes
//! back to its slot when the last response sending it is dropped, and the next page's same
//! piece is written into it: what is kept is at most one page and at most [`KEEP`] bytes (a
//! 50k-peer page, 88 MB, is kept in part), and a page that shrank lets its larger buffers go.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Mutex,
};

use bytes::Bytes;

/// A buffer more than this many times what is asked of it is let go, not reused.
const SHRINK: usize = 4;

/// The most bytes kept between scrapes: a 10k-peer page (17 MB) whole; of a larger one what
/// fits, so the memory kept does not grow with the peers.
pub const KEEP: usize = 32 << 20;

/// One buffer per piece of a page.
pub struct Slots<const N: usize> {
    slots: [Mutex<Vec<u8>>; N],
    /// The bytes the slots hold, at most KEEP.
    held: AtomicUsize,
}

impl<const N: usize> Slots<N> {
    pub const fn new() -> Self {
        Self { slots: [const { Mutex::new(Vec::new()) }; N], held: AtomicUsize::new(0) }
    }

    /// Slot `i`'s buffer, empty, with room for `capacity` bytes (a new one if another page
    /// has it, or if it is far larger than that).
    pub fn take(&self, i: usize, capacity: usize) -> Vec<u8> {
        let mut buf = std::mem::take(&mut *self.slots[i].lock().unwrap_or_else(|e| e.into_inner()));
        self.held.fetch_sub(buf.capacity(), Ordering::Relaxed);
        if buf.capacity() > capacity.saturating_mul(SHRINK) {
            buf = Vec::new();
        }
        buf.clear();
        buf.reserve(capacity);
        buf
    }

    /// `buf` as shared bytes that go back to slot `i` once the last of them is dropped.
    pub fn bytes(&'static self, i: usize, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Returning { slots: self, i, buf })
    }

    fn give_back(&self, i: usize, buf: Vec<u8>) {
        let mut slot = self.slots[i].lock().unwrap_or_else(|e| e.into_inner());
        // Two pages at once (two formats) each had one: the larger is kept, if it fits.
        let grows = buf.capacity().saturating_sub(slot.capacity());
        if grows > 0 && self.held.load(Ordering::Relaxed) + grows <= KEEP {
            self.held.fetch_add(grows, Ordering::Relaxed);
            *slot = buf;
        }
    }

    /// Bytes held for the next page (for tests).
    #[cfg(test)]
    fn held(&self) -> usize {
        let held = self.slots.iter().map(|s| s.lock().unwrap().capacity()).sum();
        assert_eq!(held, self.held.load(Ordering::Relaxed), "the count of bytes held is right");
        held
    }
}

/// The owner behind a piece's `Bytes`.
struct Returning<const N: usize> {
    slots: &'static Slots<N>,
    i: usize,
    buf: Vec<u8>,
}

impl<const N: usize> AsRef<[u8]> for Returning<N> {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl<const N: usize> Drop for Returning<N> {
    fn drop(&mut self) {
        self.slots.give_back(self.i, std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A piece's buffer comes back when its last clone is dropped, and the next take of the
    /// same slot gets that very allocation, empty.
    #[test]
    fn a_buffer_comes_back_when_its_last_reference_goes_and_is_reused() {
        static SLOTS: Slots<2> = Slots::new();
        let mut buf = SLOTS.take(1, 1000);
        buf.extend_from_slice(b"page text");
        let at = buf.as_ptr();
        let bytes = SLOTS.bytes(1, buf);
        let clone = bytes.clone();
        drop(bytes);
        assert_eq!(SLOTS.held(), 0, "a clone still sends it");
        assert_eq!(&clone[..], b"page text");
        drop(clone);
        assert!(SLOTS.held() >= 1000);
        let again = SLOTS.take(1, 900);
        assert_eq!((again.as_ptr(), again.len()), (at, 0));
        assert_eq!(SLOTS.held(), 0, "taken: another page at once gets a new one");
        assert_eq!(SLOTS.take(0, 10).capacity(), 10, "the other slot had none");
    }

    /// Of two pages' buffers for one slot the larger is kept; one far larger than asked is
    /// let go (a page that shrank does not hold its old size).
    #[test]
    fn the_larger_is_kept_and_a_far_larger_one_let_go() {
        static SLOTS: Slots<1> = Slots::new();
        let (small, large) = (SLOTS.take(0, 100), SLOTS.take(0, 10_000));
        drop(SLOTS.bytes(0, large));
        drop(SLOTS.bytes(0, small));
        assert!(SLOTS.held() >= 10_000);
        let reused = SLOTS.take(0, 5_000);
        assert!(reused.capacity() >= 10_000);
        drop(SLOTS.bytes(0, reused));
        let fresh = SLOTS.take(0, 100);
        assert!(fresh.capacity() < 10_000, "kept {} for 100 bytes", fresh.capacity());
        assert_eq!(SLOTS.held(), 0);
    }

    /// What does not fit in KEEP is let go: the memory kept stays bounded whatever the page.
    #[test]
    fn no_more_than_keep_is_kept() {
        static SLOTS: Slots<3> = Slots::new();
        let (a, b, c) = (SLOTS.take(0, KEEP / 2), SLOTS.take(1, KEEP / 2), SLOTS.take(2, 1000));
        let (a_cap, b_cap) = (a.capacity(), b.capacity());
        drop(SLOTS.bytes(0, a));
        drop(SLOTS.bytes(1, b));
        drop(SLOTS.bytes(2, c));
        assert!(SLOTS.held() <= KEEP, "{} held", SLOTS.held());
        assert_eq!(SLOTS.held(), a_cap + b_cap, "the two halves fit, the third did not");
        // Taken and given back again, the same bytes still fit.
        let a = SLOTS.take(0, KEEP / 2);
        drop(SLOTS.bytes(0, a));
        assert_eq!(SLOTS.held(), a_cap + b_cap);
    }
}
