//! A packet capture on one interface, as tcpdump takes it: every packet the interface sends
//! or receives with the kernel's own timestamp (taken at the device, next to where our hooks
//! run). Tests use it as a truth that holds none of the probing application's own wakeups.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{bail, Result};

use crate::netns;

/// One captured packet: its bytes from the IP header on (the interface is L3, or the link
/// header is cut off), whether the interface sent it, and when (CLOCK_REALTIME).
pub struct Packet {
    pub at: Duration,
    pub outgoing: bool,
    pub data: Vec<u8>,
}

impl Packet {
    /// The transport header and payload, if this is an IPv4 or IPv6 packet (without
    /// extension headers, as the lab sends them) of protocol `proto`.
    pub fn l4(&self, proto: u8) -> Option<&[u8]> {
        let ip = &self.data;
        let (p, start) = match ip.first()? >> 4 {
            4 => (*ip.get(9)?, usize::from(ip[0] & 0xf) * 4),
            6 => (*ip.get(6)?, 40),
            _ => return None,
        };
        (p == proto).then(|| ip.get(start..)).flatten()
    }
}

/// An AF_PACKET socket bound to one interface; packets wait in its buffer until [`drain`].
///
/// [`drain`]: Capture::drain
pub struct Capture {
    fd: OwnedFd,
    iface: String,
}

impl Capture {
    /// Starts capturing on `iface` in namespace `ns`. Holds up to 8 MiB of packets.
    pub fn start(ns: &str, iface: &str) -> Result<Self> {
        let name = iface.to_string();
        let fd = netns::within(ns, move || {
            let c = std::ffi::CString::new(name.clone())?;
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket calls with valid arguments; the fd is owned at once.
            unsafe {
                let ifindex = libc::if_nametoindex(c.as_ptr());
                if ifindex == 0 {
                    bail!("no interface {name}");
                }
                let raw = libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, proto as i32);
                if raw < 0 {
                    bail!("AF_PACKET socket on {name}: {}", std::io::Error::last_os_error());
                }
                let fd = OwnedFd::from_raw_fd(raw);
                let on: libc::c_int = 1;
                let size: libc::c_int = 8 << 20;
                for (opt, v) in [(libc::SO_TIMESTAMPNS, on), (libc::SO_RCVBUFFORCE, size)] {
                    if libc::setsockopt(raw, libc::SOL_SOCKET, opt, (&raw const v).cast(), 4) != 0 {
                        bail!("setsockopt {opt} on {name}: {}", std::io::Error::last_os_error());
                    }
                }
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = proto;
                addr.sll_ifindex = ifindex as i32;
                let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                if libc::bind(raw, (&raw const addr).cast(), len) != 0 {
                    bail!("binding capture to {name}: {}", std::io::Error::last_os_error());
                }
                Ok(fd)
            }
        })?;
        Ok(Self { fd, iface: iface.to_string() })
    }

    /// Every packet captured since the start or the last drain, oldest first.
    pub fn drain(&self) -> Result<Vec<Packet>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        // Room for one SCM_TIMESTAMPNS (a cmsghdr and a timespec), aligned for cmsghdr.
        let mut control = [0u64; 8];
        loop {
            // SAFETY: msghdr points at live buffers of the stated sizes for this call only;
            // the control message is read only if the kernel wrote one of the right type.
            unsafe {
                let mut from: libc::sockaddr_ll = std::mem::zeroed();
                let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_name = (&raw mut from).cast();
                msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                msg.msg_iov = &raw mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = std::mem::size_of_val(&control);
                let n = libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT);
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::WouldBlock {
                        return Ok(out);
                    }
                    bail!("reading the capture on {}: {e}", self.iface);
                }
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                if cmsg.is_null()
                    || (*cmsg).cmsg_level != libc::SOL_SOCKET
                    || (*cmsg).cmsg_type != libc::SCM_TIMESTAMPNS
                {
                    bail!("a packet captured on {} came without its timestamp", self.iface);
                }
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                out.push(Packet {
                    at: Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
                    outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
                    data: buf[..n as usize].to_vec(),
                });
            }
        }
    }
}
