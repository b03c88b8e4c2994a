//! Pinning: each device's maps and program links live under bpffs in a directory of their
//! own, so the programs keep counting while the collector restarts or is upgraded, and the
//! next collector adopts the same maps.
//!
//! A directory holds one file per map (named as in `wg_common::names`) and one per link
//! (`link_<program>@<interface>`). META says which layout made the maps; a collector adopts
//! only maps of its own layout and sizes, and otherwise refuses the device with the reason
//! (or, when told to, replaces them: that device's counters start again from zero).

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, Map, MapData, MapInfo};
use wg_common::{names, pinning};

/// The default pin root; systemd and Kubernetes nodes mount bpffs at /sys/fs/bpf.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/wg-collector";
const SYS_FS_BPF: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where the collector pins, and what it does with maps of another layout.
#[derive(Clone, Debug)]
pub struct PinOptions {
    pub root: PathBuf,
    /// Replace pinned maps this collector cannot adopt instead of refusing the device.
    pub replace: bool,
}

/// One device's pin directory.
#[derive(Clone, Debug)]
pub struct PinDir {
    path: PathBuf,
    replace: bool,
}

impl PinDir {
    pub fn new(opts: &PinOptions, device: &str) -> Self {
        Self { path: opts.root.join(device), replace: opts.replace }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn link(&self, program: &str, iface: &str) -> PathBuf {
        self.path.join(format!("link_{program}@{iface}"))
    }

    /// Unpins the links of `program` on any interface; returns how many there were. A link
    /// whose pin goes detaches (TCX: the pin is its last holder).
    pub fn unpin_links(&self, program: &str) -> Result<usize> {
        let prefix = format!("link_{program}@");
        self.unpin_where(|name| name.starts_with(&prefix))
    }

    /// Makes the directory ready for a load with these map sizes. Returns whether it holds
    /// maps to adopt (false: the load creates and pins them).
    pub fn prepare(&self, sizes: &[(&str, u32)]) -> Result<bool> {
        std::fs::create_dir_all(&self.path)
            .with_context(|| format!("creating pin directory {}", self.path.display()))?;
        let found = if self.map(names::META).exists() { Found::Sealed(self.check(sizes)) } else { Found::Unsealed };
        match adoption(found, self.replace) {
            Adoption::Adopt => Ok(true),
            Adoption::Fresh => {
                self.clear()?;
                Ok(false)
            }
            Adoption::Replace(why) => {
                tracing::warn!(pins = %self.path.display(), "replacing pinned maps (their counters start from zero): {why:#}");
                self.clear()?;
                Ok(false)
            }
            Adoption::Refuse(why) => Err(why.context(format!(
                "cannot adopt the maps pinned in {} (start with --bpf.replace-pinned to replace them; their counters then start from zero)",
                self.path.display()
            ))),
        }
    }

    /// Whether the pinned maps are of this build's layout and of the sizes asked for.
    fn check(&self, sizes: &[(&str, u32)]) -> Result<()> {
        let meta = MapData::from_pin(self.map(names::META)).context("opening META")?;
        let meta: Array<MapData, u64> = Array::try_from(Map::Array(meta))?;
        let layout = meta.get(&pinning::META_LAYOUT, 0)?;
        if layout != pinning::layout() {
            bail!("they have layout {layout:#x}, this collector uses {:#x}", pinning::layout());
        }
        for name in names::PINNED {
            let path = self.map(name);
            let info = MapInfo::from_pin(&path).with_context(|| format!("map {name} is missing"))?;
            if let Some((_, want)) = sizes.iter().find(|(n, _)| *n == name) {
                if info.max_entries() != *want {
                    bail!("map {name} has {} entries, {want} were asked for (--bpf.max-peers, --bpf.max-allowed-ips and the --latency.max-* flags size them)", info.max_entries());
                }
            }
        }
        Ok(())
    }

    /// Records that the maps just created are of this build's layout (last, so a load that
    /// fails half-way leaves no META and is started afresh).
    pub fn seal(&self, meta: &mut Array<MapData, u64>) -> Result<()> {
        meta.set(pinning::META_LAYOUT, pinning::layout(), 0).context("writing META")
    }

    /// Unpins everything of this device: links whose program no longer has a pin detach.
    pub fn clear(&self) -> Result<()> {
        self.unpin_where(|_| true).map(|_| ())
    }

    /// Unpins the pins whose name `which` picks; returns how many.
    fn unpin_where(&self, which: impl Fn(&str) -> bool) -> Result<usize> {
        let entries = match std::fs::read_dir(&self.path) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        let mut n = 0;
        for entry in entries {
            let entry = entry?;
            if which(&entry.file_name().to_string_lossy()) {
                let p = entry.path();
                std::fs::remove_file(&p).with_context(|| format!("unpinning {}", p.display()))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Unpins everything and removes the directory.
    pub fn remove(&self) -> Result<()> {
        self.clear()?;
        match std::fs::remove_dir(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.path.display()))
            }
            _ => Ok(()),
        }
    }
}

/// What a pin directory holds.
enum Found {
    /// No META: nothing, or a load that did not finish.
    Unsealed,
    /// Sealed maps, and whether they fit this build and these sizes.
    Sealed(Result<()>),
}

/// What to do with what a pin directory holds.
#[derive(Debug)]
enum Adoption {
    /// Adopt the maps: the counts go on.
    Adopt,
    /// Start afresh (nothing to lose).
    Fresh,
    /// Maps that do not fit, replaced as asked (--bpf.replace-pinned).
    Replace(anyhow::Error),
    /// Maps that do not fit, kept: the device is refused.
    Refuse(anyhow::Error),
}

fn adoption(found: Found, replace: bool) -> Adoption {
    match found {
        Found::Unsealed => Adoption::Fresh,
        Found::Sealed(Ok(())) => Adoption::Adopt,
        Found::Sealed(Err(why)) if replace => Adoption::Replace(why),
        Found::Sealed(Err(why)) => Adoption::Refuse(why),
    }
}

/// Makes sure `root` is a directory on bpffs. When it lies under /sys/fs/bpf and nothing is
/// mounted there, mounts bpffs there (as systemd does at boot); elsewhere it must be mounted
/// already.
pub fn ensure_bpffs(root: &Path) -> Result<()> {
    let on_bpffs = |p: &Path| statfs_type(p).is_ok_and(|t| t == BPF_FS_MAGIC);
    let mount_point = if root.starts_with(SYS_FS_BPF) { Path::new(SYS_FS_BPF) } else { root };
    if !on_bpffs(mount_point) {
        if mount_point != Path::new(SYS_FS_BPF) {
            bail!("{} is not on a bpffs (mount one there: mount -t bpf bpf {})", root.display(), root.display());
        }
        mount_bpffs(mount_point).with_context(|| format!("mounting bpffs on {SYS_FS_BPF}"))?;
        tracing::info!("mounted bpffs on {SYS_FS_BPF}");
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))
}

/// Removes the pin directories under `root` of devices not in `devices`.
pub fn sweep(root: &Path, devices: &[&str]) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() && !devices.contains(&name.as_str()) {
            PinDir { path: entry.path(), replace: false }.remove()?;
            removed.push(name);
        }
    }
    Ok(removed)
}

fn statfs_type(p: &Path) -> io::Result<i64> {
    let c = CString::new(p.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

fn mount_bpffs(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p)?;
    let target = CString::new(p.as_os_str().as_bytes())?;
    let (src, fstype, data) = (c"bpf", c"bpf", c"mode=0700");
    // SAFETY: all strings are NUL-terminated and outlive the call.
    if unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, data.as_ptr().cast()) } != 0 {
        return Err(anyhow!(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_maps_that_fit_are_adopted_others_refused_unless_replacing() {
        let misfit = || Found::Sealed(Err(anyhow::anyhow!("map PENDING has 1024 entries, 65536 were asked for")));
        assert!(matches!(adoption(Found::Sealed(Ok(())), false), Adoption::Adopt));
        assert!(matches!(adoption(Found::Sealed(Ok(())), true), Adoption::Adopt), "fitting maps are never replaced");
        assert!(matches!(adoption(Found::Unsealed, false), Adoption::Fresh));
        assert!(matches!(adoption(misfit(), true), Adoption::Replace(_)));
        match adoption(misfit(), false) {
            Adoption::Refuse(why) => assert!(why.to_string().contains("PENDING has 1024 entries")),
            other => panic!("{other:?}"),
        }
    }
}
