//! Kernel WireGuard: device state over generic netlink (family "wireguard"), as `wg show`
//! reads it. Messages are built and parsed by the rust-netlink crates; this module only
//! sends the dump request and folds the multipart answer into a [`Device`].
//!
//! A large device does not fit one message: the kernel splits the peer list over several,
//! and may split one peer's allowed IPs too, repeating that peer's public key at the start
//! of the next message. [`fold`] merges such continuations.
//!
//! A dump that runs while the device changes is flagged NLM_F_DUMP_INTR by the kernel: its
//! parts may come from before and after the change (a peer missing from both, or in both).
//! Such a dump is read again, up to [`DUMP_ATTEMPTS`] times; only a consistent one is used.

use std::time::Duration;

use ipnet::IpNet;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST};
use netlink_packet_generic::{
    ctrl::{nlas::GenlCtrlAttrs, GenlCtrl, GenlCtrlCmd},
    GenlMessage,
};
use netlink_packet_wireguard::{
    WireguardAllowedIpAttr, WireguardAttribute, WireguardCmd, WireguardMessage, WireguardPeerAttribute,
};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

use super::{Device, Key, Peer};

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
    for interrupted in 0..DUMP_ATTEMPTS {
        let mut msg = GenlMessage::from_payload(WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::IfName(name.to_string())],
        });
        msg.set_resolved_family_id(family);
        let (parts, consistent) = request(&sock, msg, NLM_F_REQUEST | NLM_F_DUMP, name)?;
        if consistent {
            return Ok((fold(name, parts.into_iter().map(|m| m.payload)), interrupted));
        }
    }
    Err(NetlinkError::Interrupted { device: name.to_string() })
}

fn open() -> Result<Socket, NetlinkError> {
    let mut sock = Socket::new(NETLINK_GENERIC)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
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
    let mut nl = NetlinkMessage::from(payload);
    nl.header.flags = flags;
    nl.header.sequence_number = 1;
    nl.finalize();
    let mut buf = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut buf);
    sock.send(&buf, 0)?;

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

/// What one datagram of answers said besides its messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// It ends the answer (done, or the ACK of a plain request).
    pub done: bool,
    /// A message of it was flagged NLM_F_DUMP_INTR.
    pub interrupted: bool,
}

/// Decodes one datagram of kernel answers into `out`. Whatever the bytes, an error or a
/// result, never a panic (the netlink fuzz target feeds it arbitrary input).
pub fn decode<F>(data: &[u8], device: &str, out: &mut Vec<GenlMessage<F>>) -> Result<Decoded, NetlinkError>
where
    F: netlink_packet_generic::GenlFamily
        + netlink_packet_core::Emitable
        + netlink_packet_core::ParseableParametrized<[u8], netlink_packet_generic::GenlHeader>
        + std::fmt::Debug,
{
    let mut off = 0;
    let mut said = Decoded::default();
    while off < data.len() {
        if empty_cidr_mask(&data[off..]) {
            let what = "an allowed IP whose CIDR mask attribute is empty".into();
            return Err(NetlinkError::Decode { device: device.into(), what });
        }
        let msg = NetlinkMessage::<GenlMessage<F>>::deserialize(&data[off..])
            .map_err(|e| NetlinkError::Decode { device: device.into(), what: e.to_string() })?;
        let len = msg.header.length as usize;
        said.interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
        match msg.payload {
            NetlinkPayload::InnerMessage(m) => out.push(m),
            NetlinkPayload::Done(_) => return Ok(Decoded { done: true, ..said }),
            NetlinkPayload::Error(e) => match e.code {
                None => return Ok(Decoded { done: true, ..said }), // the ACK that ends a non-dump request
                // Not e.to_io(): it overflows on i32::MIN (found by the netlink fuzz target).
                Some(code) => {
                    let source = match code.get().checked_abs() {
                        Some(errno) => std::io::Error::from_raw_os_error(errno),
                        None => std::io::Error::other(format!("error code {code}")),
                    };
                    return Err(NetlinkError::Kernel { device: device.into(), source });
                }
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

/// Whether the message at the start of `msg` holds an allowed IP whose CIDR mask attribute is
/// empty. netlink-packet-wireguard 0.5.0 (the latest) reads that attribute's first byte
/// without checking that it has one, and panics (found by the netlink fuzz target); the kernel
/// never sends one, but a reading must fail, not the thread. The same walk as the parser's:
/// the device's attributes after the netlink and generic netlink headers, its peers, their
/// allowed IPs.
fn empty_cidr_mask(msg: &[u8]) -> bool {
    const WGDEVICE_A_PEERS: u16 = 8;
    const WGPEER_A_ALLOWEDIPS: u16 = 9;
    const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;
    let len = msg.get(..4).map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let Some(device) = msg.get(20..len.min(msg.len())) else { return false };
    attributes(device).filter(|(t, _)| *t == WGDEVICE_A_PEERS).any(|(_, peers)| {
        attributes(peers).any(|(_, peer)| {
            attributes(peer).filter(|(t, _)| *t == WGPEER_A_ALLOWEDIPS).any(|(_, ips)| {
                attributes(ips).any(|(_, ip)| attributes(ip).any(|(t, v)| t == WGALLOWEDIP_A_CIDR_MASK && v.is_empty()))
            })
        })
    })
}

/// The netlink attributes in `b`: (type without its flags, value); stops at the first that
/// does not fit.
fn attributes(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let head = b.get(..4)?;
        let len = u16::from_ne_bytes([head[0], head[1]]) as usize;
        let kind = u16::from_ne_bytes([head[2], head[3]]) & netlink_packet_core::NLA_TYPE_MASK;
        if len < 4 {
            return None; // not even its own header: nothing after it can be found
        }
        let value = b.get(4..len)?;
        b = b.get((len + 3) & !3..).unwrap_or_default();
        Some((kind, value))
    })
}

/// Folds the messages of one dump into a device.
pub fn fold(name: &str, parts: impl IntoIterator<Item = WireguardMessage>) -> Device {
    let mut dev = Device { name: name.to_string(), ..Device::default() };
    for part in parts {
        for attr in part.attributes {
            match attr {
                WireguardAttribute::PublicKey(k) => dev.public_key = Some(Key(k)),
                WireguardAttribute::ListenPort(p) => dev.listen_port = p,
                WireguardAttribute::Fwmark(m) => dev.fwmark = m,
                WireguardAttribute::Peers(peers) => {
                    for (i, p) in peers.into_iter().enumerate() {
                        let peer = peer_from(p.0);
                        match dev.peers.last_mut() {
                            // The first peer of a message continues the last one of the
                            // previous message when the kernel split its allowed IPs.
                            Some(last) if i == 0 && last.public_key == peer.public_key => {
                                last.allowed_ips.extend(peer.allowed_ips)
                            }
                            _ => dev.peers.push(peer),
                        }
                    }
                }
                _ => {}
            }
        }
    }
    dev
}

fn peer_from(attrs: Vec<WireguardPeerAttribute>) -> Peer {
    let mut peer = Peer::new(Key([0; 32]));
    for a in attrs {
        match a {
            WireguardPeerAttribute::PublicKey(k) => peer.public_key = Key(k),
            WireguardPeerAttribute::Endpoint(e) => peer.endpoint = Some(e),
            WireguardPeerAttribute::PersistentKeepalive(s) => peer.persistent_keepalive = s,
            WireguardPeerAttribute::LastHandshake(t) => {
                peer.last_handshake = (t.seconds > 0 || t.nano_seconds > 0)
                    .then(|| Duration::new(t.seconds.max(0) as u64, t.nano_seconds.clamp(0, 999_999_999) as u32))
            }
            WireguardPeerAttribute::RxBytes(b) => peer.rx_bytes = b,
            WireguardPeerAttribute::TxBytes(b) => peer.tx_bytes = b,
            WireguardPeerAttribute::AllowedIps(ips) => {
                for ip in ips {
                    let (mut addr, mut cidr) = (None, None);
                    for a in ip.0 {
                        match a {
                            WireguardAllowedIpAttr::IpAddr(x) => addr = Some(x),
                            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(c),
                            _ => {}
                        }
                    }
                    if let (Some(addr), Some(cidr)) = (addr, cidr) {
                        if let Ok(net) = IpNet::new(addr, cidr) {
                            peer.allowed_ips.push(net.trunc());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, ParseableParametrized};
    use netlink_packet_generic::GenlHeader;
    use netlink_packet_wireguard::{WireguardAddressFamily, WireguardAllowedIp, WireguardPeer, WireguardTimeSpec};

    use std::net::IpAddr;

    use super::*;

    /// Found by the netlink fuzz target: an allowed IP whose CIDR mask attribute is empty made
    /// netlink-packet-wireguard index past its end. An error naming the device, no panic
    /// (the fuzzer treats a panic as a crash even where it would be caught).
    #[test]
    fn an_empty_cidr_mask_attribute_is_an_error() {
        let data = include_bytes!("../../../fuzz/seeds/netlink/regress-empty-cidr-mask");
        let mut out: Vec<GenlMessage<WireguardMessage>> = Vec::new();
        match decode(data, "wg0", &mut out) {
            Err(NetlinkError::Decode { device, .. }) => assert_eq!(device, "wg0"),
            other => panic!("{other:?}"),
        }
    }

    fn allowed(ip: &str, cidr: u8) -> WireguardAllowedIp {
        let addr: IpAddr = ip.parse().unwrap();
        let family = if addr.is_ipv4() { WireguardAddressFamily::Ipv4 } else { WireguardAddressFamily::Ipv6 };
        WireguardAllowedIp(vec![
            WireguardAllowedIpAttr::Family(family),
            WireguardAllowedIpAttr::IpAddr(addr),
            WireguardAllowedIpAttr::Cidr(cidr),
        ])
    }

    /// Emits a message with the crate's own encoder and parses it back, as the kernel's
    /// bytes would be.
    fn wire(msg: WireguardMessage) -> WireguardMessage {
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        let header = GenlHeader { cmd: WireguardCmd::GetDevice.into(), version: 1 };
        WireguardMessage::parse_with_param(&buf, header).unwrap()
    }

    /// A part the kernel flagged NLM_F_DUMP_INTR makes the answer inconsistent; the same part
    /// without the flag does not.
    #[test]
    fn an_interrupted_dump_is_told() {
        for (flags, interrupted) in [(0, false), (NLM_F_DUMP_INTR, true)] {
            let mut payload = GenlMessage::from_payload(WireguardMessage {
                cmd: WireguardCmd::GetDevice,
                attributes: vec![WireguardAttribute::IfName("wg0".into())],
            });
            payload.set_resolved_family_id(21);
            let mut nl = NetlinkMessage::from(payload);
            nl.header.flags = netlink_packet_core::NLM_F_MULTIPART | flags;
            nl.finalize();
            let mut buf = vec![0u8; nl.buffer_len()];
            nl.serialize(&mut buf);
            let mut out: Vec<GenlMessage<WireguardMessage>> = Vec::new();
            assert_eq!(decode(&buf, "wg0", &mut out).unwrap(), Decoded { done: false, interrupted });
            assert_eq!(out.len(), 1);
        }
    }

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

    #[test]
    fn folds_a_dump_split_inside_a_peer() {
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        let first = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![
                WireguardAttribute::IfName("wg0".into()),
                WireguardAttribute::PublicKey([9; 32]),
                WireguardAttribute::ListenPort(51820),
                WireguardAttribute::Fwmark(0),
                WireguardAttribute::Peers(vec![WireguardPeer(vec![
                    WireguardPeerAttribute::PublicKey(k1),
                    WireguardPeerAttribute::Endpoint("10.200.0.2:51820".parse().unwrap()),
                    WireguardPeerAttribute::LastHandshake(WireguardTimeSpec {
                        seconds: 1_700_000_000,
                        nano_seconds: 7,
                    }),
                    WireguardPeerAttribute::RxBytes(10),
                    WireguardPeerAttribute::TxBytes(20),
                    WireguardPeerAttribute::AllowedIps(vec![allowed("10.99.0.2", 32)]),
                ])]),
            ],
        };
        let second = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![
                WireguardAttribute::IfName("wg0".into()),
                WireguardAttribute::Peers(vec![
                    WireguardPeer(vec![
                        WireguardPeerAttribute::PublicKey(k1),
                        WireguardPeerAttribute::AllowedIps(vec![allowed("fd99::1", 64)]),
                    ]),
                    WireguardPeer(vec![
                        WireguardPeerAttribute::PublicKey(k2),
                        WireguardPeerAttribute::LastHandshake(WireguardTimeSpec { seconds: 0, nano_seconds: 0 }),
                    ]),
                ]),
            ],
        };
        let d = fold("wg0", [wire(first), wire(second)]);
        assert_eq!(d.public_key, Some(Key([9; 32])));
        assert_eq!(d.listen_port, 51820);
        assert_eq!(d.peers.len(), 2);
        let p = &d.peers[0];
        assert_eq!(p.public_key, Key(k1));
        assert_eq!((p.rx_bytes, p.tx_bytes), (10, 20));
        assert_eq!(p.last_handshake, Some(Duration::new(1_700_000_000, 7)));
        assert_eq!(p.allowed_ips, vec!["10.99.0.2/32".parse::<IpNet>().unwrap(), "fd99::/64".parse().unwrap()]);
        assert_eq!(d.peers[1].last_handshake, None);
    }
}
