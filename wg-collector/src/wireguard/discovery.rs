//! Finds the WireGuard devices of a network namespace: kernel devices by their link kind,
//! userspace ones by their UAPI socket.

use std::{
    os::{fd::AsRawFd, unix::fs::MetadataExt, unix::net::UnixStream},
    path::{Path, PathBuf},
};

use super::Implementation;
use crate::links::Interface;

/// The API a device's state is read through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Api {
    /// Generic netlink, family "wireguard".
    Netlink,
    /// The UAPI socket of a userspace implementation.
    Uapi(PathBuf),
}

/// A device found in a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    /// The interface index identifies this incarnation of the device: a device deleted and
    /// created again under the same name gets a new one.
    pub ifindex: u32,
    pub implementation: Implementation,
    pub api: Api,
    /// The `netns` label of its namespace; None for the collector's own.
    pub netns: Option<String>,
}

impl Found {
    /// What names it among every device the collector follows: its name, and its namespace's
    /// label after an `@` when that is not the collector's own (pin directories).
    pub fn key(&self) -> String {
        match &self.netns {
            None => self.name.clone(),
            Some(ns) => format!("{}@{ns}", self.name),
        }
    }
}

/// The directory where userspace implementations put their sockets.
pub const DEFAULT_UAPI_DIR: &str = "/var/run/wireguard";

/// Where to look for UAPI sockets: `dir`, and the same directory under each root of another
/// mount namespace (a container's). Under such a root an absolute symlink would lead back to
/// the collector's own root, so /var/run (a link to /run on most systems) is also looked up
/// as /run there.
pub fn uapi_dirs(dir: &Path, roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = vec![dir.to_path_buf()];
    let rel = dir.strip_prefix("/").unwrap_or(dir);
    for root in roots {
        dirs.push(root.join(rel));
        if let Ok(rest) = rel.strip_prefix("var/run") {
            dirs.push(root.join("run").join(rest));
        }
    }
    dirs
}

/// Lists the WireGuard devices of the namespace with these `interfaces` (inode `netns` if
/// known, labelled `label`): kernel ones by their link kind, userspace ones from the sockets in
/// `uapi_dirs` served by a process in that namespace whose interface is among them (a stale
/// socket, or one of a device in another namespace, is skipped).
pub fn discover(
    interfaces: &[Interface],
    uapi_dirs: &[PathBuf],
    netns: Option<u64>,
    label: Option<&str>,
) -> Vec<Found> {
    let netns_label = label.map(str::to_string);
    let mut found: Vec<Found> = interfaces
        .iter()
        .filter(|i| i.kind.as_deref() == Some("wireguard"))
        .map(|i| Found {
            name: i.name.clone(),
            ifindex: i.ifindex,
            implementation: Implementation::Kernel,
            api: Api::Netlink,
            netns: netns_label.clone(),
        })
        .collect();
    for dir in uapi_dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "sock") {
                continue;
            }
            let Some(name) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else { continue };
            let Some(iface) = interfaces.iter().find(|i| i.name == name) else { continue };
            if found.iter().any(|f| f.name == name) {
                continue;
            }
            let Some((implementation, pid)) = implementation_behind(&path) else { continue };
            if netns.is_some_and(|ns| !served_from(pid, ns)) {
                continue;
            }
            found.push(Found {
                name,
                ifindex: iface.ifindex,
                implementation,
                api: Api::Uapi(path),
                netns: netns_label.clone(),
            });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// Whether process `pid` (a UAPI socket's server) is in network namespace `netns`; true when
/// that cannot be told (pid unknown, or its namespace not ours to read): the interface's name
/// was checked already.
fn served_from(pid: i32, netns: u64) -> bool {
    if pid <= 0 {
        return true;
    }
    std::fs::metadata(format!("/proc/{pid}/ns/net")).map_or(true, |m| m.ino() == netns)
}

/// Names the program that serves a UAPI socket, and its pid, from the peer credentials of a
/// connection to it. `None` when nothing listens (a stale socket).
fn implementation_behind(socket: &Path) -> Option<(Implementation, i32)> {
    let stream = UnixStream::connect(socket).ok()?;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes a ucred of at most `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    let comm = if rc == 0 && cred.pid > 0 {
        std::fs::read_to_string(format!("/proc/{}/comm", cred.pid)).unwrap_or_default()
    } else {
        String::new()
    };
    Some((implementation_from_comm(comm.trim()), cred.pid))
}

fn implementation_from_comm(comm: &str) -> Implementation {
    match comm {
        "wireguard-go" => Implementation::WireguardGo,
        c if c.starts_with("boringtun") => Implementation::Boringtun,
        "" => Implementation::Userspace("userspace".into()),
        c => Implementation::Userspace(c.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_implementations() {
        assert_eq!(implementation_from_comm("wireguard-go"), Implementation::WireguardGo);
        assert_eq!(implementation_from_comm("boringtun-cli"), Implementation::Boringtun);
        assert_eq!(implementation_from_comm("amneziawg-go"), Implementation::Userspace("amneziawg-go".into()));
    }

    #[test]
    fn looks_under_container_roots() {
        let dirs = uapi_dirs(Path::new("/var/run/wireguard"), &["/proc/7/root".into()]);
        let want: Vec<PathBuf> = vec![
            "/var/run/wireguard".into(),
            "/proc/7/root/var/run/wireguard".into(),
            "/proc/7/root/run/wireguard".into(),
        ];
        assert_eq!(dirs, want);
    }

    #[test]
    fn loopback_is_no_wireguard_device() {
        let dir = std::env::temp_dir().join(format!("wg-discovery-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A socket file nobody listens on, named like an existing interface: skipped.
        std::fs::write(dir.join("lo.sock"), b"").unwrap();
        let found = discover(&crate::links::dump().unwrap(), std::slice::from_ref(&dir), None, None);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(found.iter().all(|f| f.name != "lo"), "{found:?}");
    }
}
