//! Finds the WireGuard devices of this network namespace: kernel devices by their link
//! type, userspace ones by their UAPI socket.

use std::{
    ffi::CString,
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::{Path, PathBuf},
};

use super::Implementation;

/// The API a device's state is read through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Api {
    /// Generic netlink, family "wireguard".
    Netlink,
    /// The UAPI socket of a userspace implementation.
    Uapi(PathBuf),
}

/// A device found in this namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    /// The interface index identifies this incarnation of the device: a device deleted and
    /// created again under the same name gets a new one.
    pub ifindex: u32,
    pub implementation: Implementation,
    pub api: Api,
}

/// The directory where userspace implementations put their sockets.
pub const DEFAULT_UAPI_DIR: &str = "/var/run/wireguard";

/// Lists WireGuard devices: kernel ones from /sys/class/net, userspace ones from the
/// sockets in `uapi_dir` whose interface exists in this namespace (a stale socket, or one
/// of a device in another namespace, is skipped).
pub fn discover(uapi_dir: &Path) -> Vec<Found> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let uevent = std::fs::read_to_string(e.path().join("uevent")).unwrap_or_default();
            if uevent.lines().any(|l| l == "DEVTYPE=wireguard") {
                if let Some(ifindex) = ifindex(&name) {
                    found.push(Found { name, ifindex, implementation: Implementation::Kernel, api: Api::Netlink });
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(uapi_dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "sock") {
                continue;
            }
            let Some(name) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else { continue };
            let Some(ifindex) = ifindex(&name) else { continue };
            if found.iter().any(|f| f.name == name) {
                continue;
            }
            let Some(implementation) = implementation_behind(&path) else { continue };
            found.push(Found { name, ifindex, implementation, api: Api::Uapi(path) });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// The interface index of `name` in this namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Names the program that serves a UAPI socket, from the peer credentials of a connection
/// to it. `None` when nothing listens (a stale socket).
fn implementation_behind(socket: &Path) -> Option<Implementation> {
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
    Some(implementation_from_comm(comm.trim()))
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
    fn loopback_is_no_wireguard_device() {
        let dir = std::env::temp_dir().join(format!("wg-discovery-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A socket file nobody listens on, named like an existing interface: skipped.
        std::fs::write(dir.join("lo.sock"), b"").unwrap();
        let found = discover(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(found.iter().all(|f| f.name != "lo"), "{found:?}");
    }
}
