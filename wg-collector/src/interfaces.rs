//! Interfaces and their addresses: which interface carries a device's encrypted datagrams
//! (the one the kernel routes its peers' endpoints through), and a WireGuard interface's own
//! subnets (its address pools).

use std::{
    ffi::CStr,
    net::{IpAddr, SocketAddr, UdpSocket},
};

use ipnet::IpNet;

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

/// The addresses of interface `name` with their prefix lengths (10.99.0.1/24).
pub fn addresses_of(name: &str) -> Vec<IpNet> {
    let mut out = Vec::new();
    each_address(|iface, addr, mask| {
        if iface == name {
            if let Some(prefix) = mask.map(prefix_len) {
                out.extend(IpNet::new(addr, prefix).ok());
            }
        }
        false
    });
    out
}

fn prefix_len(mask: IpAddr) -> u8 {
    match mask {
        IpAddr::V4(m) => u32::from(m).count_ones() as u8,
        IpAddr::V6(m) => u128::from(m).count_ones() as u8,
    }
}

/// The name of the interface that has address `ip`.
fn interface_with(ip: IpAddr) -> Option<String> {
    let mut found = None;
    each_address(|iface, addr, _| {
        if addr == ip {
            found = Some(iface.to_string());
            return true;
        }
        false
    });
    found
}

/// Calls `f(interface, address, netmask)` for every address of every interface until it
/// returns true.
fn each_address(mut f: impl FnMut(&str, IpAddr, Option<IpAddr>) -> bool) {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; we only read it in between.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return;
    }
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        // SAFETY: the address fields point at sockaddrs of the family they name, or are null.
        let (Some(addr), mask) = (unsafe { to_ip(ifa.ifa_addr) }, unsafe { to_ip(ifa.ifa_netmask) }) else { continue };
        // SAFETY: ifa_name is a NUL-terminated string.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        if f(&name, addr, mask) {
            break;
        }
    }
    // SAFETY: the list came from getifaddrs.
    unsafe { libc::freeifaddrs(list) };
}

/// # Safety
/// `sa` is null or points at a sockaddr of the family it names.
unsafe fn to_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: as the caller promises.
    unsafe {
        match (*sa).sa_family as i32 {
            libc::AF_INET => {
                Some(IpAddr::from(u32::from_be((*(sa as *const libc::sockaddr_in)).sin_addr.s_addr).to_be_bytes()))
            }
            libc::AF_INET6 => Some(IpAddr::from((*(sa as *const libc::sockaddr_in6)).sin6_addr.s6_addr)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints_go_through_lo() {
        assert_eq!(interface_for("127.0.0.1:51820".parse().unwrap()).as_deref(), Some("lo"));
        assert!(addresses_of("lo").contains(&"127.0.0.1/8".parse().unwrap()));
    }
}
