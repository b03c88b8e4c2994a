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
