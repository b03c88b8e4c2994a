//! Kernel WireGuard: device state over generic netlink (family "wireguard"), as `wg show`
//! reads it. The requests are built by the rust-netlink crates; the dump's answer is read
//! straight from its attributes into a [`Device`] ([`Dump`], dump.rs).
//!
//! The answer is received into one buffer kept for the whole dump, large enough that the
//! kernel fills 32 KiB a datagram (it sizes the next part by the reader's largest buffer so
//! far); a reader that peeks for each datagram's size gets ~4 KiB parts, eight times the
//! system calls and dump rounds.
//!
//! A dump that runs while the device changes is flagged NLM_F_DUMP_INTR by the kernel: its
//! parts may come from before and after the change (a peer missing from both, or in both).
//! Such a dump is read again, up to [`DUMP_ATTEMPTS`] times; only a consistent one is used.

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST};
use netlink_packet_generic::{
    ctrl::{nlas::GenlCtrlAttrs, GenlCtrl, GenlCtrlCmd},
    GenlMessage,
};
use netlink_packet_wireguard::{WireguardAttribute, WireguardCmd, WireguardMessage};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket};

use super::Device;

mod dump;
pub use dump::Dump;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the kernel has no generic netlink family \"wireguard\" (is the module loaded?)")]
    NoFamily,
    #[error("device {device}: the kernel answered: {source}")]
    Kernel { device: String, source: std::io::Error },
    #[error("device {device}: undecodable netlink message: {what}")]
    Decode { device: String, what: String },
    #[error("device {device}: every one of {DUMP_ATTEMPTS} dumps was interrupted by changes to the device")]
    Interrupted { device: String },
}

impl NetlinkError {
    /// What went wrong, as wireguard_collector_device_read_errors_total's `kind` says it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io(_) | Self::NoFamily => "io",
            Self::Kernel { .. } => "errno",
            Self::Decode { .. } => "malformed",
            Self::Interrupted { .. } => "interrupted",
        }
    }
}

/// Dumps of one reading before it gives up on a device that keeps changing.
pub const DUMP_ATTEMPTS: u32 = 5;

/// Reads the full state of kernel device `name`, and how many dumps were interrupted (and
/// read again) on the way.
pub fn get(name: &str) -> Result<(Device, u32), NetlinkError> {
    let sock = open()?;
    let family = resolve_family(&sock, "wireguard")?;
    let mut buf = vec![0u8; RECEIVE_BUFFER];
    for interrupted in 0..DUMP_ATTEMPTS {
        let mut msg = GenlMessage::from_payload(WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::IfName(name.to_string())],
        });
        msg.set_resolved_family_id(family);
        send(&sock, msg, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut dump = Dump::new(name);
        loop {
            let n = sock.recv(&mut &mut buf[..], libc::MSG_TRUNC)?;
            if n > buf.len() {
                let what = format!("a datagram of {n} bytes, more than the {} read", buf.len());
                return Err(NetlinkError::Decode { device: name.into(), what });
            }
            if dump.take(&buf[..n])?.done {
                break;
            }
        }
        if !dump.interrupted {
            return Ok((dump.device, interrupted));
        }
    }
    Err(NetlinkError::Interrupted { device: name.to_string() })
}

/// The receive buffer: twice the largest part the kernel makes (32 KiB less overhead).
const RECEIVE_BUFFER: usize = 64 * 1024;

fn open() -> Result<Socket, NetlinkError> {
    let mut sock = Socket::new(NETLINK_GENERIC)?;
    sock.bind_auto()?;
    sock.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    Ok(sock)
}

/// The id the kernel gave generic netlink family `name`.
fn resolve_family(sock: &Socket, name: &str) -> Result<u16, NetlinkError> {
    let msg = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(name.into())],
    });
    let (answers, _) = request(sock, msg, NLM_F_REQUEST | NLM_F_ACK, name).map_err(|e| match e {
        NetlinkError::Kernel { .. } => NetlinkError::NoFamily,
        e => e,
    })?;
    answers
        .iter()
        .flat_map(|m| m.payload.nlas.iter())
        .find_map(|a| if let GenlCtrlAttrs::FamilyId(id) = a { Some(*id) } else { None })
        .ok_or(NetlinkError::NoFamily)
}

/// Sends one request and collects the answers until the kernel says it is done; and whether
/// none of them was flagged interrupted.
fn request<F>(
    sock: &Socket,
    payload: GenlMessage<F>,
    flags: u16,
    device: &str,
) -> Result<(Vec<GenlMessage<F>>, bool), NetlinkError>
where
    F: netlink_packet_generic::GenlFamily
        + netlink_packet_core::Emitable
        + netlink_packet_core::ParseableParametrized<[u8], netlink_packet_generic::GenlHeader>
        + std::fmt::Debug,
{
    send(sock, payload, flags)?;
    // A dump ends with NLMSG_DONE; a plain request with the ACK asked for by NLM_F_ACK.
    let mut out = Vec::new();
    let mut interrupted = false;
    loop {
        let (data, _) = sock.recv_from_full()?;
        let d = decode(&data, device, &mut out)?;
        interrupted |= d.interrupted;
        if d.done {
            return Ok((out, !interrupted));
        }
    }
}

/// Sends one request.
fn send<F>(sock: &Socket, payload: GenlMessage<F>, flags: u16) -> Result<(), NetlinkError>
where
    F: netlink_packet_generic::GenlFamily + netlink_packet_core::Emitable + std::fmt::Debug,
{
    let mut nl = NetlinkMessage::from(payload);
    nl.header.flags = flags;
    nl.header.sequence_number = 1;
    nl.finalize();
    let mut buf = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut buf);
    sock.send(&buf, 0)?;
    Ok(())
}

/// What one datagram of answers said besides its messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// It ends the answer (done, or the ACK of a plain request).
    pub done: bool,
    /// A message of it was flagged NLM_F_DUMP_INTR.
    pub interrupted: bool,
}

/// Decodes one datagram of kernel answers to a request of family `F` (the control family's,
/// through the crates) into `out`.
fn decode<F>(data: &[u8], device: &str, out: &mut Vec<GenlMessage<F>>) -> Result<Decoded, NetlinkError>
where
    F: netlink_packet_generic::GenlFamily
        + netlink_packet_core::Emitable
        + netlink_packet_core::ParseableParametrized<[u8], netlink_packet_generic::GenlHeader>
        + std::fmt::Debug,
{
    let mut off = 0;
    let mut said = Decoded::default();
    while off < data.len() {
        let msg = NetlinkMessage::<GenlMessage<F>>::deserialize(&data[off..])
            .map_err(|e| NetlinkError::Decode { device: device.into(), what: e.to_string() })?;
        let len = msg.header.length as usize;
        said.interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
        match msg.payload {
            NetlinkPayload::InnerMessage(m) => out.push(m),
            NetlinkPayload::Done(_) => return Ok(Decoded { done: true, ..said }),
            NetlinkPayload::Error(e) => match e.code {
                None => return Ok(Decoded { done: true, ..said }), // the ACK that ends a non-dump request
                Some(code) => return Err(kernel_error(device, code.get())),
            },
            _ => {}
        }
        if len == 0 {
            break;
        }
        off += (len + 3) & !3;
    }
    Ok(said)
}

/// The kernel's answer `code` (a negative errno) as an error. Not through the crate's
/// `to_io()`: it overflows on i32::MIN (found by the netlink fuzz target).
fn kernel_error(device: &str, code: i32) -> NetlinkError {
    let source = match code.checked_abs() {
        Some(errno) => std::io::Error::from_raw_os_error(errno),
        None => std::io::Error::other(format!("error code {code}")),
    };
    NetlinkError::Kernel { device: device.into(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against this machine's kernel: the control family always exists (id 16, GENL_ID_CTRL);
    /// without the WireGuard module, "wireguard" does not, and says so.
    #[test]
    fn resolves_families_with_the_running_kernel() {
        let sock = open().unwrap();
        assert_eq!(resolve_family(&sock, "nlctrl").unwrap(), 16);
        let wg = resolve_family(&sock, "wireguard");
        let has_module = std::path::Path::new("/sys/module/wireguard").exists();
        assert_eq!(wg.is_ok(), has_module, "{wg:?}");
        if !has_module {
            assert!(get("wg0").unwrap_err().to_string().contains("no generic netlink family \"wireguard\""));
        }
    }
}
