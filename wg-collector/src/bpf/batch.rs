//! BPF_MAP_LOOKUP_BATCH on a per-CPU array, which aya does not offer: the counters of every
//! peer slot in a few syscalls instead of one per peer (10,000 per scrape at 10k peers).

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Entries `0..entries` of a per-CPU array of `V`, each folded from its `cpus` per-CPU
/// values by `fold` (no allocation per entry). `Err(Unsupported)` where the kernel has no
/// batch operations for arrays (before 5.6).
pub fn lookup_percpu_array<V: Pod + Default, T>(
    fd: BorrowedFd<'_>,
    entries: u32,
    cpus: usize,
    fold: impl Fn(&[V]) -> T,
) -> io::Result<Vec<T>> {
    // The kernel lays out each element's per-CPU values 8-byte aligned.
    let stride = size_of::<V>().div_ceil(8) * 8;
    const CHUNK: u32 = 4096;
    let mut out = Vec::with_capacity(entries as usize);
    let mut per_cpu = vec![V::default(); cpus];
    let (mut keys, mut values) = (vec![0u32; CHUNK as usize], vec![0u8; CHUNK as usize * stride * cpus]);
    let (mut in_batch, mut out_batch) = (0u32, 0u32);
    let mut first = true;
    while (out.len() as u32) < entries {
        let want = CHUNK.min(entries - out.len() as u32);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &in_batch as *const u32 as u64 },
            out_batch: &mut out_batch as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: want,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: attr points at buffers sized for `want` keys and values, alive for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let done = if r < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // The end of the map: `count` says how many came first.
                Some(libc::ENOENT) => true,
                Some(libc::EINVAL) | Some(libc::ENOTSUP) | Some(libc::EOPNOTSUPP) if first => {
                    return Err(io::ErrorKind::Unsupported.into())
                }
                _ => return Err(e),
            }
        } else {
            false
        };
        for i in 0..attr.count as usize {
            let element = &values[i * stride * cpus..(i + 1) * stride * cpus];
            for (c, v) in per_cpu.iter_mut().enumerate() {
                // SAFETY: V is Pod; the slice holds size_of::<V>() bytes at this offset.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        element[c * stride..].as_ptr(),
                        (v as *mut V).cast::<u8>(),
                        size_of::<V>(),
                    )
                };
            }
            out.push(fold(&per_cpu));
        }
        if done || attr.count == 0 {
            break;
        }
        in_batch = out_batch;
        first = false;
    }
    out.truncate(entries as usize);
    Ok(out)
}
