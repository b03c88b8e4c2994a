//! A BPF array created with BPF_F_MMAPABLE, mapped into the collector's memory: read and
//! written without a syscall per entry, shared with the programs while they run. What may be
//! touched concurrently, and how, is for the user of each table to say.

use std::{
    io,
    marker::PhantomData,
    mem::size_of,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    ptr::NonNull,
};

use anyhow::Context;
use aya::maps::Map;

pub struct MappedArray<T> {
    entries: NonNull<T>,
    len: usize,
    mapped: usize,
    _values: PhantomData<T>,
}

// SAFETY: plain shared memory; its users say how entries are accessed concurrently.
unsafe impl<T> Send for MappedArray<T> {}
unsafe impl<T> Sync for MappedArray<T> {}

impl<T: Copy> MappedArray<T> {
    /// Maps the `len` values of `map`, which must be an array created BPF_F_MMAPABLE.
    pub fn of(map: Map, name: &str, len: u32) -> anyhow::Result<Self> {
        match map {
            Map::Array(m) => Self::map(m.fd().as_fd(), len).with_context(|| format!("mapping {name} into memory")),
            _ => anyhow::bail!("map {name} is not an array"),
        }
    }

    /// Maps the `len` values of the array behind `fd` (the map's own fd or its pin's).
    fn map(fd: BorrowedFd<'_>, len: u32) -> io::Result<Self> {
        // Array values are laid out 8-byte aligned: T's size must be a multiple of 8 for
        // entry i to be at i · size_of::<T>().
        const { assert!(size_of::<T>().is_multiple_of(8)) };
        // SAFETY: a query without side effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let mapped = (len as usize * size_of::<T>()).next_multiple_of(page);
        // SAFETY: a new shared mapping of the map's values; checked for failure below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let entries = NonNull::new(p as *mut T).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { entries, len: len as usize, mapped, _values: PhantomData })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Entry `i`, for the caller to read or write as the table's protocol allows.
    pub fn entry(&self, i: usize) -> *mut T {
        assert!(i < self.len, "entry {i} of {}", self.len);
        // SAFETY: inside the mapping (checked just above).
        unsafe { self.entries.as_ptr().add(i) }
    }
}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.entries.as_ptr() as *mut _, self.mapped) };
    }
}
