//! Attaching: the plaintext programs to the WireGuard interface, the underlay programs to
//! each interface its datagrams cross; with pins, the links outlive the collector.

use std::collections::HashSet;

use anyhow::{anyhow, Context, Result};
use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{self, SchedClassifierLink},
    SchedClassifier, TcAttachType,
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
    /// Netlink (clsact) attachments cannot be pinned: they end with the collector.
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
            None => prog.attach(iface, attach_type)?,
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

    pub fn underlays(&self) -> &HashSet<String> {
        &self.underlays
    }
}
