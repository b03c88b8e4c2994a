//! What the running kernel must offer the programs, probed at start so that a kernel without
//! it is refused in one line naming the feature and the first Linux that has it, instead of a
//! verifier dump at every device.
//!
//! The programs take and swap values with BPF's atomic exchange and fetch instructions
//! (BPF_XCHG, BPF_CMPXCHG, BPF_FETCH: Linux 5.12). Older verifiers reject them as
//! "BPF_STX uses reserved fields". The probe loads a five-instruction socket filter that
//! exchanges a stack slot: the kernel either takes it or does not know the instruction.

use std::os::fd::{FromRawFd, OwnedFd};

/// A kernel feature the programs need.
#[derive(Debug, PartialEq, Eq)]
pub struct Missing {
    pub feature: &'static str,
    pub since: &'static str,
    /// What bpf() answered the probe.
    pub error: String,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this kernel ({}) lacks {}, which the eBPF programs use: wg-collector needs Linux {} or later (the probe: {})",
            std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            self.feature,
            self.since,
            self.error
        )
    }
}

/// One eBPF instruction (struct bpf_insn).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// dst_reg in the low four bits, src_reg in the high four.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: dst | (src << 4), off, imm }
}

/// *(u64 *)(r10 - 8) = 0; r2 = 1; r2 = xchg((u64 *)(r10 - 8), r2); r0 = 0; exit.
const XCHG_PROBE: [Insn; 5] = [
    insn(0x7a, 10, 0, -8, 0),    // BPF_ST | BPF_MEM | BPF_DW
    insn(0xb7, 2, 0, 0, 1),      // BPF_ALU64 | BPF_MOV | BPF_K
    insn(0xdb, 10, 2, -8, 0xe1), // BPF_STX | BPF_ATOMIC | BPF_DW, imm BPF_XCHG (0xe0 | BPF_FETCH)
    insn(0xb7, 0, 0, 0, 0),
    insn(0x95, 0, 0, 0, 0), // BPF_JMP | BPF_EXIT
];

/// The start of union bpf_attr for BPF_PROG_LOAD (the kernel reads the rest as zeros).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    _rest: [u64; 12],
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// Probes what the programs need; None when the kernel has it all.
pub fn missing() -> Option<Missing> {
    let license = c"GPL";
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: XCHG_PROBE.len() as u32,
        insns: XCHG_PROBE.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: bpf(BPF_PROG_LOAD) reads `attr` and the instructions and license it points to,
    // all alive for the call; a returned fd is owned (and closed) here.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoad, std::mem::size_of::<ProgLoad>())
    };
    if fd >= 0 {
        // SAFETY: a new fd the kernel gave us and nobody else holds.
        drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        return None;
    }
    let err = std::io::Error::last_os_error();
    // Only the instruction's absence says the kernel is too old: EINVAL. A missing privilege
    // (EPERM) is reported by the capability check, with its own words.
    (err.raw_os_error() == Some(libc::EINVAL)).then(|| Missing {
        feature: "the eBPF atomic exchange instructions (BPF_XCHG, BPF_CMPXCHG, BPF_FETCH)",
        since: "5.12",
        error: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // That this kernel passes the probe, every lab test shows (a false refusal stops the
    // collector); that 5.10 is refused, the kernel VM (cargo xtask vmtest --kernel 5.10).
    #[test]
    fn the_refusal_names_the_feature_and_the_kernel_that_has_it() {
        let m = Missing { feature: "X", since: "5.12", error: "Invalid argument (os error 22)".into() };
        let line = m.to_string();
        assert!(line.contains("lacks X") && line.contains("Linux 5.12 or later") && !line.contains('\n'), "{line}");
    }
}
