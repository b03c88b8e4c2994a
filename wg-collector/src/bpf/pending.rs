//! The pending table (questions waiting for their answer, see wg_common::latency::PendingEntry)
//! as the collector sees it: the programs' array mapped into our memory (the map is
//! BPF_F_MMAPABLE), so expiring is a walk over memory with a compare-and-swap per expired
//! question, not a syscall per entry, and cannot race an answer: whoever changes `sent` from
//! the time it read ends the question.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use wg_common::latency::PendingEntry;

pub struct PendingTable {
    entries: NonNull<PendingEntry>,
    places: usize,
    mapped: usize,
}

// SAFETY: the mapping is plain shared memory; `sent` is only touched atomically and the rest
// only read.
unsafe impl Send for PendingTable {}
unsafe impl Sync for PendingTable {}

/// What one walk over the table found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expiry {
    /// Questions still waiting (younger than the TTL).
    pub waiting: u64,
    /// Questions older than the TTL, freed by this walk.
    pub expired: u64,
}

impl PendingTable {
    /// Maps the PENDING array of `places` entries (its fd: the map's own or its pin's).
    pub fn map(fd: BorrowedFd<'_>, places: u32) -> io::Result<Self> {
        // SAFETY: a query without side effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // Array values are laid out 8-byte aligned; PendingEntry's size is already.
        const { assert!(size_of::<PendingEntry>() % 8 == 0) };
        let mapped = (places as usize * size_of::<PendingEntry>()).next_multiple_of(page);
        // SAFETY: a new shared mapping of the map's values; checked for failure below.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), mapped, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0)
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let entries = NonNull::new(p as *mut PendingEntry).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { entries, places: places as usize, mapped })
    }

    /// Frees the places of questions that left more than `ttl_ns` before `now_ns`
    /// (CLOCK_MONOTONIC, the programs' clock).
    pub fn expire(&self, now_ns: u64, ttl_ns: u64) -> Expiry {
        let mut found = Expiry::default();
        for i in 0..self.places {
            let sent = self.sent(i);
            let t = sent.load(Ordering::Relaxed);
            if t == 0 {
                continue;
            }
            if now_ns.saturating_sub(t) <= ttl_ns {
                found.waiting += 1;
            } else if sent.compare_exchange(t, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                // Else an answer took it, or a newer question its place, meanwhile.
                found.expired += 1;
            }
        }
        found
    }

    fn sent(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.places);
        // SAFETY: inside the mapping (checked just above); `sent` is 8-aligned (the mapping
        // is page-aligned, entries 56 bytes, the field at offset 48) and lives as long as
        // `self`. The programs write it with whole 8-byte stores and BPF_XCHG.
        unsafe { AtomicU64::from_ptr(&raw mut (*self.entries.as_ptr().add(i)).sent) }
    }
}

impl Drop for PendingTable {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.entries.as_ptr() as *mut _, self.mapped) };
    }
}
