//! The network namespaces the collector reads WireGuard in (`--netns`): its own always, and
//! named ones (/run/netns/NAME), a process's (/proc/PID/ns/net), or every one there is
//! (`all`, followed as they appear and go).
//!
//! Work in another namespace runs on a short-lived thread that has entered it (setns moves
//! one thread only): the sockets it opens (rtnetlink, WireGuard's generic netlink, the route
//! lookup's UDP socket) and the programs it attaches (TCX and clsact take an ifindex of the
//! caller's namespace) are that namespace's. /sys is not: sysfs shows the namespace it was
//! mounted in, so nothing a pass does reads /sys/class/net.
//!
//! The collector holds an fd of each namespace it follows, from one refresh to the next. With
//! it, a namespace that went away is entered once more to detach what was attached there
//! (clsact filters, before kernel 6.6, are removed by ifindex, which outside could name
//! another device), and a name that now means another namespace (a new inode) is told from
//! the old one. Holding it keeps a deleted namespace alive until the next refresh, no longer.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

/// Where named namespaces are mounted (`ip netns add`, CNI plugins).
pub const RUN_NETNS: &str = "/run/netns";

/// The namespaces asked for with `--netns`, besides the collector's own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Every namespace: those named under /run/netns and those of every process.
    pub all: bool,
    /// Namespace files: /run/netns/NAME, /proc/PID/ns/net, or any bind mount of one.
    pub paths: Vec<PathBuf>,
}

impl Selection {
    /// From the `--netns` values: `all`, a name under /run/netns, or an absolute path. The
    /// error names the value that is neither.
    pub fn parse(values: &[String]) -> Result<Self, String> {
        let mut sel = Selection::default();
        for v in values {
            match v.as_str() {
                "all" => sel.all = true,
                v if v.starts_with('/') => sel.paths.push(PathBuf::from(v)),
                v if v.is_empty() || v.contains('/') || v == "." || v == ".." => return Err(format!("{v:?}")),
                v => sel.paths.push(Path::new(RUN_NETNS).join(v)),
            }
        }
        Ok(sel)
    }

    /// Whether only the collector's own namespace is read.
    pub fn is_own_only(&self) -> bool {
        !self.all && self.paths.is_empty()
    }
}

/// A namespace as one look found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The `netns` label: the name of a named namespace, `net:[INODE]` (as
    /// /proc/PID/ns/net reads) of one known only through its processes.
    pub label: String,
    pub inode: u64,
    /// The file to open it by.
    pub path: PathBuf,
    /// Root directories (/proc/PID/root) of the mount namespaces its processes see, where
    /// their UAPI sockets are; the collector's own root is not among them.
    pub roots: Vec<PathBuf>,
}

/// The collector's own network and mount namespaces (inode, device of nsfs).
#[derive(Clone, Copy, Debug)]
pub struct Own {
    pub net: u64,
    mnt: u64,
    nsfs: u64,
}

impl Own {
    pub fn read() -> io::Result<Self> {
        let net = std::fs::metadata("/proc/self/ns/net")?;
        let mnt = std::fs::metadata("/proc/self/ns/mnt")?;
        Ok(Own { net: net.ino(), mnt: mnt.ino(), nsfs: net.dev() })
    }
}

/// The namespaces of `sel` there are now, the collector's own left out, each once (a named
/// namespace by its name, though processes are in it too).
pub fn list(sel: &Selection, own: &Own) -> Vec<Seen> {
    let mut seen: BTreeMap<u64, Seen> = BTreeMap::new();
    let named = |path: PathBuf, seen: &mut BTreeMap<u64, Seen>| {
        let Some(inode) = netns_inode(&path, own) else { return };
        if inode == own.net || seen.contains_key(&inode) {
            return;
        }
        let label = if path.starts_with("/proc") {
            format!("net:[{inode}]")
        } else {
            path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
        };
        // A process's namespace: its own root is where its sockets are.
        let roots = process_dir(&path).map(|dir| dir.join("root")).into_iter().collect();
        seen.insert(inode, Seen { label, inode, path, roots });
    };
    for p in &sel.paths {
        named(p.clone(), &mut seen);
    }
    if sel.all {
        if let Ok(entries) = std::fs::read_dir(RUN_NETNS) {
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for p in paths {
                named(p, &mut seen);
            }
        }
    }
    // The processes: with `all`, the namespace of each is one more; and the roots of the
    // mount namespaces (containers) the processes of a namespace see are where its UAPI
    // sockets may be, one root per mount namespace.
    let mut mounts: BTreeSet<(u64, u64)> = BTreeSet::new();
    for pid in pids() {
        let dir = Path::new("/proc").join(pid.to_string());
        let (Ok(net), Ok(mnt)) = (std::fs::metadata(dir.join("ns/net")), std::fs::metadata(dir.join("ns/mnt"))) else {
            continue; // gone, or not ours to look at
        };
        if net.ino() == own.net {
            continue;
        }
        if sel.all {
            seen.entry(net.ino()).or_insert_with(|| Seen {
                label: format!("net:[{}]", net.ino()),
                inode: net.ino(),
                path: dir.join("ns/net"),
                roots: Vec::new(),
            });
        }
        let Some(s) = seen.get_mut(&net.ino()) else { continue };
        let root = dir.join("root");
        if mnt.ino() != own.mnt && mounts.insert((net.ino(), mnt.ino())) && !s.roots.contains(&root) {
            s.roots.push(root);
        }
    }
    seen.into_values().collect()
}

/// /proc/PID for /proc/PID/ns/net.
fn process_dir(path: &Path) -> Option<&Path> {
    let dir = path.parent()?.parent()?;
    (path.starts_with("/proc") && path.ends_with("ns/net")).then_some(dir)
}

/// The inode of the network namespace at `path`, if it is one (a file on nsfs of a network
/// namespace: a stale mount point under /run/netns is not).
fn netns_inode(path: &Path, own: &Own) -> Option<u64> {
    let m = std::fs::metadata(path).ok()?;
    (m.dev() == own.nsfs && is_netns(path)).then_some(m.ino())
}

/// Whether `path` is a network namespace (NS_GET_NSTYPE; nsfs holds every kind).
fn is_netns(path: &Path) -> bool {
    let Ok(f) = File::open(path) else { return false };
    // NS_GET_NSTYPE = _IO(0xb7, 0x3)
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: an ioctl without arguments on an open fd.
    let t = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE as _) };
    t == libc::CLONE_NEWNET
}

fn pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

/// A namespace the collector follows: `None` label = its own.
#[derive(Debug)]
pub struct Namespace {
    pub label: Option<String>,
    pub inode: u64,
    /// Held from one refresh to the next (see the module's note); None for its own.
    fd: Option<OwnedFd>,
}

impl Namespace {
    /// The collector's own (inode 0 where it is not known).
    pub fn own(inode: u64) -> Self {
        Namespace { label: None, inode, fd: None }
    }

    /// Opens the namespace `seen` found; fails if it is gone or is another one by now.
    pub fn open(seen: &Seen) -> io::Result<Self> {
        let f = File::open(&seen.path)?;
        let inode = f.metadata()?.ino();
        if inode != seen.inode {
            return Err(io::Error::other(format!("{} is another namespace by now", seen.path.display())));
        }
        Ok(Namespace { label: Some(seen.label.clone()), inode, fd: Some(f.into()) })
    }

    /// Runs `f` in this namespace: on the calling thread for the collector's own, else on a
    /// thread that entered it (and ends with `f`).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let Some(fd) = &self.fd else { return Ok(f()) };
        let fd = fd.as_fd();
        std::thread::scope(|s| {
            let thread = std::thread::Builder::new().name("netns".into()).spawn_scoped(s, move || {
                // SAFETY: setns on this thread only, with an fd of a network namespace.
                if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })?;
            thread.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_flag() {
        let s = Selection::parse(&["blue".into(), "/proc/1/ns/net".into()]).unwrap();
        assert_eq!(s, Selection { all: false, paths: vec!["/run/netns/blue".into(), "/proc/1/ns/net".into()] });
        assert!(Selection::parse(&["all".into()]).unwrap().all);
        assert!(Selection::parse(&[]).unwrap().is_own_only());
        assert_eq!(Selection::parse(&["blue".into(), "netns/blue".into()]), Err("\"netns/blue\"".into()));
        assert!(Selection::parse(&["".into()]).is_err());
    }

    #[test]
    fn own_namespace_is_never_listed() {
        let own = Own::read().unwrap();
        let sel = Selection { all: false, paths: vec!["/proc/self/ns/net".into(), "/proc/1/ns/net".into()] };
        assert!(list(&sel, &own).iter().all(|s| s.inode != own.net));
        // Not a network namespace: a mount namespace, a plain file, nothing.
        for p in ["/proc/self/ns/mnt", "/etc/hostname", "/nonexistent"] {
            let sel = Selection { all: false, paths: vec![p.into()] };
            assert_eq!(list(&sel, &own), vec![], "{p}");
        }
    }

    #[test]
    fn runs_inside_another_namespace() {
        // A namespace of our own making, held only by the fd: unshare on a thread, keep its fd.
        let own = Own::read().unwrap();
        let fd = std::thread::spawn(|| {
            // SAFETY: unshare on this thread only.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "{}", io::Error::last_os_error());
            File::open("/proc/thread-self/ns/net").unwrap()
        })
        .join()
        .unwrap();
        let inode = fd.metadata().unwrap().ino();
        assert_ne!(inode, own.net);
        let ns = Namespace { label: Some("t".into()), inode, fd: Some(fd.into()) };
        let (seen_inode, ifaces) = ns
            .run(|| {
                let m = std::fs::metadata("/proc/thread-self/ns/net").unwrap();
                (m.ino(), crate::links::dump().unwrap())
            })
            .unwrap();
        assert_eq!(seen_inode, inode);
        // A new namespace has its loopback and nothing else.
        assert_eq!(ifaces.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["lo"]);
        // The calling thread stayed where it was.
        assert_eq!(std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino(), own.net);
    }
}
