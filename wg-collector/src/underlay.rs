//! Which interface carries a device's encrypted datagrams: the one the kernel routes its
//! peers' endpoints through.

use std::{
    ffi::CStr,
    net::{IpAddr, SocketAddr, UdpSocket},
};

/// The interface the kernel would send a datagram to `endpoint` from: connect a UDP socket
/// (nothing is sent), take its local address, find the interface that has it.
///
/// Policy routing by fwmark (WireGuard's own packets may carry one) is not followed; name
/// the interface with `--underlay` where that matters.
pub fn interface_for(endpoint: SocketAddr) -> Option<String> {
    let bind: SocketAddr = if endpoint.is_ipv4() { "0.0.0.0:0".parse().ok()? } else { "[::]:0".parse().ok()? };
    let sock = UdpSocket::bind(bind).ok()?;
    sock.connect(endpoint).ok()?;
    interface_with(sock.local_addr().ok()?.ip())
}

/// The name of the interface that has address `ip`.
fn interface_with(ip: IpAddr) -> Option<String> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; we only read it in between.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr of the family it names.
        let addr = unsafe {
            match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::from(sin6.sin6_addr.s6_addr))
                }
                _ => None,
            }
        };
        if addr == Some(ip) {
            // SAFETY: ifa_name is a NUL-terminated string.
            found = Some(unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned());
            break;
        }
    }
    // SAFETY: the list came from getifaddrs.
    unsafe { libc::freeifaddrs(list) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints_go_through_lo() {
        assert_eq!(interface_for("127.0.0.1:51820".parse().unwrap()).as_deref(), Some("lo"));
    }
}
