//! The capabilities the collector needs to load and attach its programs, checked at start
//! so that a missing one is named rather than surfacing as EPERM from deep inside aya.

/// (bit, name, why, whether CAP_SYS_ADMIN stands in for it as it did before 5.8)
const NEEDED: [(u32, &str, &str, bool); 3] = [
    (39, "CAP_BPF", "load programs and create maps", true),
    (12, "CAP_NET_ADMIN", "attach TC programs and read WireGuard over netlink", false),
    (38, "CAP_PERFMON", "read maps with pointer-carrying programs loaded and use bpf stats", true),
];
const CAP_SYS_ADMIN: u32 = 21;

/// The needed capabilities missing from this process's effective set, with the reason
/// each is needed.
pub fn missing() -> Vec<(&'static str, &'static str)> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    missing_from(eff)
}

fn missing_from(eff: u64) -> Vec<(&'static str, &'static str)> {
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    NEEDED
        .iter()
        .filter(|(bit, _, _, sys_admin_will_do)| {
            let held = has(*bit) || (*sys_admin_will_do && has(CAP_SYS_ADMIN));
            !held
        })
        .map(|(_, name, why, _)| (*name, *why))
        .collect()
}

/// Drops every capability but the three the daemon needs for the rest of its life, from the
/// effective, permitted, inheritable and ambient sets of this thread (threads started later
/// inherit them), and from the bounding set where it may (CAP_SETPCAP); and sets
/// no_new_privs, so nothing it could execute gains any back.
///
/// Kept, and why: CAP_BPF (every bpf() call, map reads included, needs it while unprivileged
/// BPF is disabled, and new devices need programs and maps), CAP_NET_ADMIN (attaching TC
/// programs to new devices and underlays; WireGuard's netlink GET_DEVICE), CAP_PERFMON (the
/// programs' direct packet access and pointer use when loaded for a new device); and the
/// `extra` ones, each with its reason. The process stays uid 0: the UAPI sockets under
/// /var/run/wireguard are root's.
pub fn drop_unneeded(extra: &[(caps::Capability, &str)]) -> anyhow::Result<()> {
    use caps::{CapSet, Capability};
    let mut keep: caps::CapsHashSet =
        [Capability::CAP_BPF, Capability::CAP_NET_ADMIN, Capability::CAP_PERFMON].into_iter().collect();
    for (cap, why) in extra {
        if !caps::has_cap(None, CapSet::Permitted, *cap).unwrap_or(false) {
            anyhow::bail!("missing privileges: {cap} (to {why}); run as root or grant it");
        }
        keep.insert(*cap);
    }
    let mut bounding_kept = true;
    for cap in caps::all() {
        if !keep.contains(&cap)
            && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false)
            && caps::drop(None, CapSet::Bounding, cap).is_err()
        {
            bounding_kept = false;
        }
    }
    if !bounding_kept {
        tracing::warn!("could not shrink the capability bounding set (no CAP_SETPCAP); the other sets are reduced");
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    let permitted = caps::read(None, CapSet::Permitted)?;
    let kept: caps::CapsHashSet = keep.intersection(&permitted).copied().collect();
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        anyhow::bail!("prctl(PR_SET_NO_NEW_PRIVS): {}", std::io::Error::last_os_error());
    }
    let mut kept: Vec<String> = kept.iter().map(|c| c.to_string()).collect();
    kept.sort();
    tracing::info!("capabilities reduced to {}", kept.join(", "));
    for (cap, why) in extra {
        tracing::info!("{cap} kept to {why}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        assert_eq!(missing_from(u64::MAX), vec![]);
        let names: Vec<_> = missing_from(0).iter().map(|m| m.0).collect();
        assert_eq!(names, ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
        assert_eq!(missing_from(1 << CAP_SYS_ADMIN).iter().map(|m| m.0).collect::<Vec<_>>(), ["CAP_NET_ADMIN"]);
        assert_eq!(missing_from(1 << 39 | 1 << 12).iter().map(|m| m.0).collect::<Vec<_>>(), ["CAP_PERFMON"]);
    }
}
