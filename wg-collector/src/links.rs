//! Link state of the WireGuard devices: up or down, and how often each went down (a flap).
//!
//! Two sources feed it: the kernel's link events (rtnetlink multicast), which catch a flap
//! the moment it happens even when it is over before the next poll, and each refresh's own
//! look at the interfaces ([`dump`]), which catches what an overrun event socket missed. A
//! flap is a transition from up to anything else: down, deleted, or replaced by a new
//! interface of the same name (a new ifindex).
//!
//! An event is newer than any dump taken before it arrived: a refresh that began listing the
//! interfaces before a device went down must not set it up again (and then, with no event
//! left to come, hold the page at up until the next poll). So the events are numbered and a
//! dump says from when it is ([`Links::mark`]).
//!
//! The interfaces are read over rtnetlink, not /sys/class/net: sysfs shows the namespace it
//! was mounted in, a netlink socket the one it was opened in (see netns.rs).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
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
    states: Mutex<BTreeMap<String, Followed>>,
    /// Link events taken in so far, which numbers them.
    events: AtomicU64,
}

/// A followed device: its state, and the number of the last event that said it.
#[derive(Default)]
struct Followed {
    state: LinkState,
    event: u64,
}

impl Links {
    /// Starts following `name` (a WireGuard device the collector found), which is `now`.
    pub fn follow(&self, name: &str, now: Option<(u32, bool)>) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.entry(name.to_string()).or_insert_with(|| Followed {
            state: LinkState { up: now.is_some_and(|(_, up)| up), ifindex: now.map(|(i, _)| i), flaps: 0 },
            event: 0,
        });
    }

    /// Where the events stand: take it before listing the interfaces, and give it to
    /// [`check`](Self::check) with what was listed.
    pub fn mark(&self) -> u64 {
        self.events.load(Ordering::SeqCst)
    }

    /// Takes in a link event: `name` is now `now` (`None`: deleted, else (ifindex, up)).
    /// Ignores names not followed. Returns whether anything changed.
    pub fn event(&self, name: &str, now: Option<(u32, bool)>) -> bool {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let number = self.events.fetch_add(1, Ordering::SeqCst) + 1;
        let Some(f) = states.get_mut(name) else { return false };
        f.event = number;
        Self::observe(name, &mut f.state, now)
    }

    /// Takes in a refresh's look at the interfaces, listed after [`mark`](Self::mark) gave
    /// `since`, for every followed device no event has spoken of since.
    pub fn check(&self, interfaces: &[Interface], since: u64) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        for (name, f) in states.iter_mut().filter(|(_, f)| f.event <= since) {
            Self::observe(name, &mut f.state, interfaces.iter().find(|i| &i.name == name).map(|i| (i.ifindex, i.up)));
        }
    }

    /// `s`, the state of `name`, is now `now`. Returns whether anything changed.
    fn observe(name: &str, s: &mut LinkState, now: Option<(u32, bool)>) -> bool {
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

    pub fn all(&self) -> Vec<(String, LinkState)> {
        self.states.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(n, f)| (n.clone(), f.state)).collect()
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
                            RouteNetlinkMessage::NewLink(l) => name_of(&l)
                                .is_some_and(|name| links.event(&name, Some((l.header.index, is_up(l.header.flags))))),
                            RouteNetlinkMessage::DelLink(l) => name_of(&l).is_some_and(|name| links.event(&name, None)),
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
    fn a_dump_older_than_an_event_does_not_undo_it() {
        let links = Links::default();
        let up = |ifindex| Interface { name: "wg0".into(), ifindex, up: true, kind: None };
        let state = || links.all()[0].1;
        links.follow("wg0", Some((7, true)));
        // A refresh lists the interfaces (wg0 up), then the device goes down before it is done.
        let mark = links.mark();
        assert!(links.event("wg0", Some((7, false))));
        links.check(&[up(7)], mark);
        assert_eq!(state(), LinkState { up: false, ifindex: Some(7), flaps: 1 }, "the older dump is set aside");
        // A dump taken after the event counts: it is up again, then found replaced.
        links.check(&[up(7)], links.mark());
        assert_eq!(state(), LinkState { up: true, ifindex: Some(7), flaps: 1 });
        links.check(&[up(8)], links.mark());
        assert_eq!(state(), LinkState { up: true, ifindex: Some(8), flaps: 2 }, "a new ifindex is a flap");
        links.check(&[], links.mark());
        assert_eq!(state(), LinkState { up: false, ifindex: None, flaps: 3 }, "deleted");
        // Events for devices not followed are numbered but change nothing.
        assert!(!links.event("eth0", None));
    }

    #[test]
    fn dump_lists_loopback() {
        let all = dump().unwrap();
        let lo = all.iter().find(|i| i.name == "lo").expect("lo listed");
        assert_eq!(lo.ifindex, 1);
        assert_eq!(lo.kind, None);
    }
}
