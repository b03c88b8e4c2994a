//! File-descriptor headroom: the soft limit on open files raised to the hard one at start
//! (systemd's default soft limit is 1,024), and the connection cap kept below it by what the
//! collector needs for itself, so that accepting a connection never fails for lack of one.

use crate::http::conn::Caps;

/// Descriptors kept for the collector's own use: per device ~30 (maps, programs, links),
/// netlink and UAPI sockets, listeners, pinned files while adopting; 512 leave room for
/// about 15 devices besides the rest.
pub const RESERVED: u64 = 512;

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns (soft before, soft now).
pub fn raise() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur))
}

/// The caps that fit under a soft limit of `soft` open files with [`RESERVED`] kept.
pub fn fit(caps: Caps, soft: u64) -> Caps {
    let room = soft.saturating_sub(RESERVED).max(1);
    let total = caps.total.min(usize::try_from(room).unwrap_or(usize::MAX));
    Caps { total, per_client: caps.per_client.min(total) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caps_stay_below_the_limit_by_the_reserve() {
        let asked = Caps { total: 4096, per_client: 256 };
        assert_eq!(fit(asked, 1 << 20), asked);
        assert_eq!(fit(asked, 1024), Caps { total: 512, per_client: 256 });
        assert_eq!(fit(asked, 600), Caps { total: 88, per_client: 88 });
        assert_eq!(fit(asked, 100), Caps { total: 1, per_client: 1 });
    }
}
