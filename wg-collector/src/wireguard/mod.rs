//! WireGuard's own view of its devices and peers, read from the kernel (generic netlink)
//! or from a userspace implementation (the UAPI socket), in one model.

pub mod discovery;
pub mod key;
pub mod netlink;
pub mod uapi;

use std::{fmt, net::SocketAddr, time::Duration};

use ipnet::IpNet;

pub use key::{FastState, Key, KeyMap, KeySet};

/// Which WireGuard implementation runs a device.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Implementation {
    Kernel,
    WireguardGo,
    Boringtun,
    /// Another program speaking the UAPI, named by its process name.
    Userspace(String),
}

impl fmt::Display for Implementation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kernel => f.write_str("kernel"),
            Self::WireguardGo => f.write_str("wireguard-go"),
            Self::Boringtun => f.write_str("boringtun"),
            Self::Userspace(name) => f.write_str(name),
        }
    }
}

/// One WireGuard interface as its implementation reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub public_key: Option<Key>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<Peer>,
}

/// One peer of a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub public_key: Key,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Time of the last completed handshake since the Unix epoch; `None` = never.
    pub last_handshake: Option<Duration>,
    pub persistent_keepalive: u16,
}

impl Peer {
    pub fn new(public_key: Key) -> Self {
        Self {
            public_key,
            endpoint: None,
            allowed_ips: Vec::new(),
            rx_bytes: 0,
            tx_bytes: 0,
            last_handshake: None,
            persistent_keepalive: 0,
        }
    }
}
