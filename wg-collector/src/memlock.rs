//! Kernels before 5.11 charge each BPF map against RLIMIT_MEMLOCK (later ones charge the
//! memory cgroup instead): under the usual limit of 8 MiB, or 64 KiB on older systems, the
//! first large maps fail to be created with a bare EPERM. The limit is lifted at start, while
//! the collector may still do so (CAP_SYS_RESOURCE, which it drops with the rest); the systemd
//! unit sets LimitMEMLOCK=infinity for when it may not.

/// The first kernel that no longer charges BPF memory to RLIMIT_MEMLOCK.
const CGROUP_ACCOUNTING: (u32, u32) = (5, 11);

/// What [`raise`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Memlock {
    /// The kernel does not charge BPF memory to the limit: nothing to do.
    NotCharged,
    /// The limit is unlimited (now or already).
    Unlimited,
    /// An old kernel and a limit that could not be lifted: maps may fail to be created.
    Limited { bytes: u64, kernel: String },
}

/// Lifts RLIMIT_MEMLOCK on kernels that charge BPF maps to it.
pub fn raise() -> Memlock {
    let release = kernel_release();
    if !charges_memlock(&release) {
        return Memlock::NotCharged;
    }
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit and getrlimit read and write the structs given.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return Memlock::Unlimited;
    }
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // Without CAP_SYS_RESOURCE: the soft limit as high as the hard one allows.
    // SAFETY: as above.
    unsafe {
        libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim);
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        Memlock::Unlimited
    } else {
        Memlock::Limited { bytes: lim.rlim_cur, kernel: release }
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Whether kernel `release` (uname -r: "5.10.0-32-cloud-amd64") charges BPF maps to
/// RLIMIT_MEMLOCK; an unreadable release is taken for a new kernel.
fn charges_memlock(release: &str) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) < CGROUP_ACCOUNTING,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kernels_before_5_11_charge_the_limit() {
        assert!(charges_memlock("5.10.0-32-cloud-amd64"));
        assert!(charges_memlock("4.19.0"));
        assert!(!charges_memlock("5.11.0"));
        assert!(!charges_memlock("6.1.0-50-cloud-amd64"));
        assert!(!charges_memlock("6.12.117+deb13-cloud-amd64"));
        assert!(!charges_memlock(""), "unreadable: taken for new");
    }
}
