//! Link state of the WireGuard devices: up or down, and how often each went down (a flap).
//!
//! Two sources feed it: the kernel's link events (rtnetlink multicast), which catch a flap
//! the moment it happens even when it is over before the next poll, and each refresh's own
//! look at the interfaces ([`dump`]), which catches what an overrun event socket missed. A
//! flap is a transition from up to anything else: down, deleted, or replaced by a new
//! interface of the same name (a new ifindex).
//!
//! The interfaces are read over rtnetlink, not /sys/class/net: sysfs shows the namespace it
//! was mounted in, a netlink socket the one it was opened in (see netns.rs).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::{
    link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// What is known of one device's link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkState {
    /// The interface exists, is administratively up and has carrier (IFF_UP and IFF_RUNNING).
    pub up: bool,
    /// Its ifindex when it exists.
    pub ifindex: Option<u32>,
    /// Times it went from up to down, deleted or replaced since the collector started.
    pub flaps: u64,
}

/// The link states of the devices the collector follows, by name.
#[derive(Default)]
pub struct Links {
    states: Mutex<BTreeMap<String, LinkState>>,
}

impl Links {
    /// Starts following `name` (a WireGuard device the collector found), which is `now`.
    pub fn follow(&self, name: &str, now: Option<(u32, bool)>) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if !states.contains_key(name) {
            states.insert(
                name.to_string(),
                LinkState { up: now.is_some_and(|(_, up)| up), ifindex: now.map(|(i, _)| i), flaps: 0 },
            );
        }
    }

    /// Takes in what `name` is now: `None` when it does not exist, else (ifindex, up). Ignores
    /// names not followed. Returns whether anything changed.
    pub fn observe(&self, name: &str, now: Option<(u32, bool)>) -> bool {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = states.get_mut(name) else { return false };
        let (ifindex, up) = (now.map(|(i, _)| i), now.is_some_and(|(_, up)| up));
        if s.up && (!up || ifindex != s.ifindex) {
            s.flaps += 1;
            let how = match now {
                None => "deleted",
                Some(_) if ifindex != s.ifindex => "replaced by a new interface",
                Some(_) => "down",
            };
            tracing::warn!(device = name, flaps = s.flaps, "device went {how}");
        } else if !s.up && up {
            tracing::info!(device = name, "device up");
        }
        // A new interface that is already up behind a deleted one counts once (above) and is
        // up now.
        let changed = s.up != up || s.ifindex != ifindex;
        s.up = up;
        s.ifindex = ifindex;
        changed
    }

    /// Takes in a refresh's look at the interfaces, for every followed device.
    pub fn check(&self, interfaces: &[Interface]) {
        let names: Vec<String> = self.states.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        for name in names {
            self.observe(&name, interfaces.iter().find(|i| i.name == name).map(|i| (i.ifindex, i.up)));
        }
    }

    pub fn all(&self) -> Vec<(String, LinkState)> {
        self.states.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(n, s)| (n.clone(), *s)).collect()
    }

    /// Follows the kernel's link events on a thread of its own; `on_change` is called after
    /// each event that changed a followed device (the poll loop refreshes at once).
    pub fn watch(self: &Arc<Self>, on_change: impl Fn() + Send + 'static) -> std::io::Result<()> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        // RTMGRP_LINK: every link added, changed or deleted in this namespace.
        socket.bind(&SocketAddr::new(0, libc::RTMGRP_LINK as u32))?;
        let links = self.clone();
        std::thread::Builder::new().name("link-events".into()).spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match socket.recv(&mut &mut buf[..], 0) {
                    Ok(n) => n,
                    Err(e) => {
                        // ENOBUFS: events were lost; the next refresh looks for itself.
                        tracing::debug!("link events: {e}");
                        on_change();
                        continue;
                    }
                };
                let mut changed = false;
                let mut at = 0;
                while at < n {
                    let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..n]) else { break };
                    let len = msg.header.length as usize;
                    if let NetlinkPayload::InnerMessage(m) = msg.payload {
                        changed |= match m {
                            RouteNetlinkMessage::NewLink(l) => name_of(&l).is_some_and(|name| {
                                links.observe(&name, Some((l.header.index, is_up(l.header.flags))))
                            }),
                            RouteNetlinkMessage::DelLink(l) => {
                                name_of(&l).is_some_and(|name| links.observe(&name, None))
                            }
                            _ => false,
                        };
                    }
                    if len == 0 {
                        break;
                    }
                    at += (len + 3) & !3;
                }
                if changed {
                    on_change();
                }
            }
        })?;
        Ok(())
    }
}

fn name_of(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn is_up(flags: LinkFlags) -> bool {
    flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::Running)
}

/// One interface of a namespace, as rtnetlink lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    /// IFF_UP and IFF_RUNNING.
    pub up: bool,
    /// The link kind (IFLA_INFO_KIND): "wireguard" for kernel WireGuard, "tun" for the
    /// userspace ones' devices, None for a physical interface.
    pub kind: Option<String>,
}

/// Every interface of the namespace the calling thread is in (RTM_GETLINK dump).
pub fn dump() -> std::io::Result<Vec<Interface>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetLink(LinkMessage::default()));
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut out = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full()?;
        let mut at = 0;
        while at < data.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[at..])
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    if let Some(name) = name_of(&l) {
                        out.push(Interface {
                            name,
                            ifindex: l.header.index,
                            up: is_up(l.header.flags),
                            kind: kind_of(&l),
                        });
                    }
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    let code = e.code.map_or(0, |c| c.get().checked_abs().unwrap_or(libc::EIO));
                    return Err(std::io::Error::from_raw_os_error(code));
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += (len + 3) & !3;
        }
    }
}

fn kind_of(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.to_string()),
            _ => None,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_lists_loopback() {
        let all = dump().unwrap();
        let lo = all.iter().find(|i| i.name == "lo").expect("lo listed");
        assert_eq!(lo.ifindex, 1);
        assert_eq!(lo.kind, None);
    }
}
