//! Link state of the WireGuard devices: up or down, and how often each went down (a flap).
//!
//! Two sources feed it: the kernel's link events (rtnetlink multicast), which catch a flap
//! the moment it happens even when it is over before the next poll, and each refresh's own
//! look at the interface, which catches what an overrun event socket missed. A flap is a
//! transition from up to anything else: down, deleted, or replaced by a new interface of the
//! same name (a new ifindex).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    link::{LinkAttribute, LinkFlags, LinkMessage},
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
    /// Starts following `name` (a WireGuard device the collector found).
    pub fn follow(&self, name: &str) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if !states.contains_key(name) {
            let now = read(name);
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

    /// Looks at the interface itself (each refresh does, for every followed device).
    pub fn check(&self, name: &str) {
        self.observe(name, read(name));
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

/// (ifindex, up) of interface `name`, or `None` when there is none.
fn read(name: &str) -> Option<(u32, bool)> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return None;
    }
    let flags = std::fs::read_to_string(format!("/sys/class/net/{name}/flags")).ok()?;
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok()?;
    // sysfs' flags lack IFF_RUNNING (the kernel derives it); carrier is it, and reads as an
    // error while the link is administratively down.
    let carrier = std::fs::read_to_string(format!("/sys/class/net/{name}/carrier")).is_ok_and(|c| c.trim() == "1");
    Some((index, flags & libc::IFF_UP as u32 != 0 && carrier))
}
