//! Where the endpoint listens: one socket address, or every address of one interface
//! (`wg0:9586`), so the metrics are reachable only over the VPN. An interface's sockets are
//! bound to it (SO_BINDTODEVICE: a packet for the same address arriving on another interface
//! is refused) and follow its addresses as they are added and removed.

use std::{collections::HashMap, fmt, net::SocketAddr, str::FromStr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};

use super::conn::Gate;
use crate::interfaces;

/// `--web.listen-address`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddress {
    Socket(SocketAddr),
    /// Every address of an interface, on this port.
    Interface {
        name: String,
        port: u16,
    },
}

impl FromStr for ListenAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse() {
            return Ok(Self::Socket(a));
        }
        let bad = || format!("{s:?}: neither ADDRESS:PORT (127.0.0.1:9586, [::1]:9586) nor INTERFACE:PORT (wg0:9586)");
        let (name, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse().map_err(|_| bad())?;
        // Interface names: 1–15 bytes, no '/', ':' or whitespace (dev_valid_name).
        if name.is_empty() || name.len() > 15 || name.contains(['/', ':']) || name.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(Self::Interface { name: name.to_string(), port })
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket(a) => write!(f, "{a}"),
            Self::Interface { name, port } => write!(f, "{name}:{port}"),
        }
    }
}

impl ListenAddress {
    pub fn is_loopback(&self) -> bool {
        match self {
            Self::Socket(a) => a.ip().is_loopback(),
            Self::Interface { name, .. } => name == "lo",
        }
    }
}

/// The connections accepted on every socket of a [`ListenAddress`], as one stream.
pub struct Listeners {
    rx: mpsc::Receiver<(TcpStream, SocketAddr)>,
    _tasks: Vec<JoinHandle<()>>,
}

impl Listeners {
    /// Binds a socket address at once (an error if it cannot), or starts following an
    /// interface (which may have no address yet).
    /// Failed accepts are counted in `gate`.
    pub async fn open(addr: &ListenAddress, gate: Arc<Gate>) -> Result<Self> {
        let (tx, rx) = mpsc::channel(64);
        let task = match addr {
            ListenAddress::Socket(a) => {
                let l = TcpListener::bind(a).await.with_context(|| format!("listening on {a}"))?;
                tokio::spawn(accept(l, tx, gate))
            }
            ListenAddress::Interface { name, port } => tokio::spawn(follow(name.clone(), *port, tx, gate)),
        };
        Ok(Self { rx, _tasks: vec![task] })
    }

    pub async fn accept(&mut self) -> Option<(TcpStream, SocketAddr)> {
        self.rx.recv().await
    }
}

async fn accept(l: TcpListener, tx: mpsc::Sender<(TcpStream, SocketAddr)>, gate: Arc<Gate>) {
    loop {
        match l.accept().await {
            Ok(c) => {
                if tx.send(c).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Out of descriptors (EMFILE) keeps failing until one is freed: back off.
                gate.accept_failed();
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How often an interface's addresses are looked at.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// Keeps one listening socket per address of interface `name`.
async fn follow(name: String, port: u16, tx: mpsc::Sender<(TcpStream, SocketAddr)>, gate: Arc<Gate>) {
    let mut bound: HashMap<SocketAddr, JoinHandle<()>> = HashMap::new();
    let mut warned = false;
    loop {
        // Link-local IPv6 would need a scope; WireGuard interfaces have none by default.
        let wanted: Vec<SocketAddr> = interfaces::addresses_of(&name)
            .into_iter()
            .map(|n| n.addr())
            .filter(|a| !matches!(a, std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
            .map(|a| SocketAddr::new(a, port))
            .collect();
        if wanted.is_empty() && !warned {
            tracing::warn!(interface = %name, "the interface has no address (yet): not listening until it has one");
        }
        warned = wanted.is_empty();
        bound.retain(|a, task| {
            let keep = wanted.contains(a) && !task.is_finished();
            if !keep {
                task.abort();
                tracing::info!(interface = %name, address = %a, "stopped listening (address removed)");
            }
            keep
        });
        for a in wanted {
            if bound.contains_key(&a) {
                continue;
            }
            match bind_to(&name, a) {
                Ok(l) => {
                    tracing::info!(interface = %name, address = %a, "listening");
                    bound.insert(a, tokio::spawn(accept(l, tx.clone(), gate.clone())));
                }
                // The address may be tentative or just removed: the next look retries.
                Err(e) => tracing::debug!(interface = %name, address = %a, "not listening yet: {e:#}"),
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

fn bind_to(iface: &str, a: SocketAddr) -> Result<TcpListener> {
    let s = if a.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    s.set_reuseaddr(true)?;
    s.bind_device(Some(iface.as_bytes())).context("SO_BINDTODEVICE")?;
    s.bind(a)?;
    Ok(s.listen(1024)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_socket_addresses_and_interfaces_and_names_bad_input() {
        assert_eq!("127.0.0.1:9586".parse(), Ok(ListenAddress::Socket("127.0.0.1:9586".parse().unwrap())));
        assert_eq!("[::]:9586".parse(), Ok(ListenAddress::Socket("[::]:9586".parse().unwrap())));
        assert_eq!("wg0:9586".parse(), Ok(ListenAddress::Interface { name: "wg0".into(), port: 9586 }));
        let e = "wg0".parse::<ListenAddress>().unwrap_err();
        assert!(e.contains("\"wg0\"") && e.contains("INTERFACE:PORT"), "{e}");
        assert!("wg0:http".parse::<ListenAddress>().is_err());
        assert!("a-very-long-interface-name:1".parse::<ListenAddress>().is_err());
        assert!("::1:9586".parse::<ListenAddress>().is_err(), "IPv6 needs brackets");
        assert!("lo:9586".parse::<ListenAddress>().unwrap().is_loopback());
    }
}
