//! The caps: connections admitted while there is room overall and for their client address,
//! closed at once otherwise; and the counts of what was refused and ended.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

/// How many connections may be open at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub total: usize,
    pub per_client: usize,
}

/// `--web.max-connections` and `--web.max-connections-per-client` defaults.
pub const DEFAULT_CAPS: Caps = Caps { total: 4096, per_client: 256 };

/// Why a new connection was closed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    MaxConnectionsPerClient,
}

impl Refusal {
    pub const ALL: [Refusal; 2] = [Self::MaxConnections, Self::MaxConnectionsPerClient];
    pub fn label(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxConnectionsPerClient => "max_connections_per_client",
        }
    }
}

/// Why the server ended a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    HeaderTimeout,
    IdleTimeout,
    WriteTimeout,
    TlsHandshakeTimeout,
}

impl Ended {
    pub const ALL: [Ended; 4] = [Self::HeaderTimeout, Self::IdleTimeout, Self::WriteTimeout, Self::TlsHandshakeTimeout];
    pub fn label(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::WriteTimeout => "write_timeout",
            Self::TlsHandshakeTimeout => "tls_handshake_timeout",
        }
    }
}

/// The connection counts the page shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnCounts {
    pub open: u64,
    /// By [`Refusal`].
    pub refused: [u64; 2],
    /// By [`Ended`].
    pub ended: [u64; 4],
    /// accept() failures (out of file descriptors, ...).
    pub accept_errors: u64,
}

/// Admits connections within the caps and counts what it refused and ended.
pub struct Gate {
    caps: Caps,
    open: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    refused: [AtomicU64; 2],
    ended: [AtomicU64; 4],
    accept_errors: AtomicU64,
}

impl Gate {
    pub fn new(caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            caps,
            open: AtomicUsize::new(0),
            per_client: Mutex::default(),
            refused: Default::default(),
            ended: Default::default(),
            accept_errors: AtomicU64::new(0),
        })
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// A place for a new connection from `ip`, held until the returned guard drops.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let mut clients = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let refusal = if self.open.load(Ordering::Relaxed) >= self.caps.total {
            Some(Refusal::MaxConnections)
        } else if clients.get(&ip).copied().unwrap_or(0) >= self.caps.per_client {
            Some(Refusal::MaxConnectionsPerClient)
        } else {
            None
        };
        if let Some(r) = refusal {
            self.refused[r as usize].fetch_add(1, Ordering::Relaxed);
            return Err(r);
        }
        *clients.entry(ip).or_default() += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted { gate: self.clone(), ip })
    }

    pub fn ended(&self, why: Ended) {
        self.ended[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn accept_failed(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> ConnCounts {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConnCounts {
            open: self.open.load(Ordering::Relaxed) as u64,
            refused: self.refused.each_ref().map(load),
            ended: self.ended.each_ref().map(load),
            accept_errors: load(&self.accept_errors),
        }
    }
}

/// A connection's place; given back when it drops.
pub struct Admitted {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut clients = self.gate.per_client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = clients.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                clients.remove(&self.ip);
            }
        }
        self.gate.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn caps_refuse_beyond_the_total_and_per_client_and_give_places_back() {
        let gate = Gate::new(Caps { total: 3, per_client: 2 });
        let a1 = gate.admit(ip(1)).unwrap();
        let _a2 = gate.admit(ip(1)).unwrap();
        assert_eq!(gate.admit(ip(1)).err(), Some(Refusal::MaxConnectionsPerClient));
        let _b1 = gate.admit(ip(2)).unwrap();
        assert_eq!(gate.admit(ip(3)).err(), Some(Refusal::MaxConnections));
        drop(a1);
        let _a3 = gate.admit(ip(1)).unwrap();
        let c = gate.counts();
        assert_eq!((c.open, c.refused), (3, [1, 1]));
    }
}
