//! Attaching: the plaintext programs to the WireGuard interface, the underlay programs to
//! each interface its datagrams cross; with pins, the links outlive the collector.

use std::collections::HashSet;

use anyhow::{anyhow, Context, Result};
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcHandle},
        SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
};

use super::{program, DeviceProbe, PROGRAMS, UNDERLAY_PROGRAMS};

impl DeviceProbe {
    /// Attaches both programs to `iface` (TCX on kernels ≥ 6.6, clsact before). They run
    /// after programs already there and pass every packet on.
    pub fn attach(&mut self, iface: &str) -> Result<()> {
        // Needed only for the netlink (pre-TCX) path; harmless if it exists.
        let _ = tc::qdisc_add_clsact(iface);
        for (name, attach_type) in PROGRAMS {
            self.attach_one(name, iface, attach_type).with_context(|| format!("attaching {name} to {iface}"))?;
        }
        Ok(())
    }

    /// Attaches one program. With pins and TCX, the link is pinned, so the program stays
    /// attached when the collector exits; a link an earlier collector pinned gets this
    /// program atomically in place of its own (no packet is counted twice or missed).
    /// Netlink (clsact) attachments cannot be pinned, but outlive the collector: the next one
    /// replaces them in place (see [`attach_netlink`]).
    fn attach_one(&mut self, name: &str, iface: &str, attach_type: TcAttachType) -> Result<()> {
        let pin = self.pins.as_ref().map(|d| d.link(name, iface));
        let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        let mut replaced = None;
        if let Some(path) = pin.as_ref().filter(|p| p.exists()) {
            let old = PinnedLink::from_pin(path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
            // The old link's interface may be gone (a device deleted and created again): its
            // link cannot take a program any more, so it is unpinned and a new one made.
            let link =
                SchedClassifierLink::try_from(FdLink::from(old)).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            match prog.attach_to_link(link) {
                Ok(id) => replaced = Some(id),
                Err(e) => {
                    tracing::debug!(link = %path.display(), "pinned link not reusable ({e}); attaching anew");
                    std::fs::remove_file(path).with_context(|| format!("unpinning {}", path.display()))?;
                }
            }
        }
        let was_pinned = replaced.is_some();
        let id = match replaced {
            Some(id) => id,
            None if tcx() => prog.attach(iface, attach_type)?,
            None => attach_netlink(prog, name, iface, attach_type)?,
        };
        let Some(path) = pin else { return Ok(()) };
        if was_pinned {
            // Still pinned at its path; only our fd to it is dropped with the program.
            return Ok(());
        }
        let link = prog.take_link(id)?;
        match FdLink::try_from(link) {
            Ok(fd) => {
                fd.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
            }
            // A netlink attachment: give it back to the program, which detaches it on drop.
            Err(_) => tracing::debug!(program = name, "attached through netlink; not pinned"),
        }
        Ok(())
    }

    /// Attaches the underlay programs to `iface`, once.
    pub fn attach_underlay(&mut self, iface: &str) -> Result<()> {
        if self.underlays.contains(iface) {
            return Ok(());
        }
        let _ = tc::qdisc_add_clsact(iface);
        for (name, attach_type) in UNDERLAY_PROGRAMS {
            self.attach_one(name, iface, attach_type)
                .with_context(|| format!("attaching {name} to underlay {iface}"))?;
        }
        self.underlays.insert(iface.to_string());
        Ok(())
    }

    /// Detaches the underlay programs an earlier collector pinned (`--underlay none` after a
    /// run with them: pinned links would go on running them); returns how many links there
    /// were. Attachments through netlink (kernels before 6.6) are not pinned: those stay until
    /// their interface goes or they are deleted (README, "At line rate").
    pub fn detach_pinned_underlays(&mut self) -> Result<usize> {
        let Some(pins) = &self.pins else { return Ok(0) };
        UNDERLAY_PROGRAMS.iter().map(|(name, _)| pins.unpin_links(name)).sum()
    }

    pub fn underlays(&self) -> &HashSet<String> {
        &self.underlays
    }
}

/// TCX (6.6+), as aya chooses it: links that can be pinned.
fn tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Attaches through netlink (clsact; kernels before 6.6) at a place of our own: a priority
/// per program, after the usual ones (the kernel numbers filters from 49152 down), handle 1.
/// A filter an earlier collector left there (netlink filters outlive the process and cannot
/// be pinned) gets this program atomically in its place: attaching beside it would count
/// every packet twice into the shared pinned maps.
fn attach_netlink(
    prog: &mut SchedClassifier,
    name: &str,
    iface: &str,
    attach_type: TcAttachType,
) -> Result<SchedClassifierLinkId> {
    let place = PROGRAMS.iter().chain(UNDERLAY_PROGRAMS.iter()).position(|(n, _)| *n == name).unwrap_or(0);
    let priority = 0xFF01 + place as u16;
    let handle = TcHandle::new(0, 1);
    if let Ok(old) = SchedClassifierLink::attached(iface, attach_type, priority, handle, None) {
        if let Ok(id) = prog.attach_to_link(old) {
            tracing::debug!(program = name, iface, "replaced the clsact filter an earlier collector left");
            return Ok(id);
        }
    }
    let options = TcAttachOptions::Netlink(NlOptions { priority, handle, classid: None });
    Ok(prog.attach_with_options(iface, attach_type, options)?)
}

/// Detaches our programs attached to `iface` through netlink (clsact, kernels before 6.6):
/// such filters outlive the collector and its pins, so uninstalling removes them by name.
/// TCX links need no such care: they end with their pins. Returns how many kinds it found.
pub fn detach_clsact(iface: &str) -> usize {
    PROGRAMS
        .iter()
        .chain(UNDERLAY_PROGRAMS.iter())
        .filter(|(name, attach_type)| tc::qdisc_detach_program(iface, *attach_type, name).is_ok())
        .count()
}
