//! A UDP relay that delays every datagram by a fixed time (and transport messages by a
//! spread on top, if asked), each way: the lab's stand-in for
//! netem, which this kernel lacks. It runs as threads of the test process inside the middle
//! namespace.
//!
//! Each direction has a receiving thread that stamps datagrams with their due time and a
//! sending thread that sleeps until then: a constant delay keeps their order, and no thread
//! is spawned per packet. Each direction can also drop, swap and duplicate transport messages
//! on purpose, counting what it did (impair.rs).

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    impair::{Impaired, Impairment, State},
    netns,
};

/// A direction through the relay, by the side the datagrams go to.
#[derive(Clone, Copy, Debug)]
pub enum Toward {
    A,
    B,
}

pub struct Relay {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Toward b, toward a.
    impair: [Arc<Mutex<State>>; 2],
}

impl Relay {
    /// A relay that runs nothing (a placeholder while the lab is built).
    pub fn idle() -> Self {
        Self { stop: Arc::new(AtomicBool::new(true)), threads: Vec::new(), impair: Default::default() }
    }

    /// From now on, treats the transport messages going `toward` a side as `how` says.
    pub fn impair(&self, toward: Toward, how: Impairment) {
        self.impair[toward as usize ^ 1].lock().unwrap().how = how;
    }

    /// What was done to the messages going `toward` a side so far.
    pub fn impaired(&self, toward: Toward) -> Impaired {
        self.impair[toward as usize ^ 1].lock().unwrap().done
    }

    /// Relays between `a` = (address the relay listens on for side a, side a's address) and
    /// `b` likewise, holding each datagram for `delay`.
    pub fn start(ns: &str, delay: Duration, a: (SocketAddr, SocketAddr), b: (SocketAddr, SocketAddr)) -> Result<Self> {
        let (sock_a, sock_b) = netns::within(ns, move || {
            let sa = UdpSocket::bind(a.0).with_context(|| format!("relay binding {}", a.0))?;
            let sb = UdpSocket::bind(b.0).with_context(|| format!("relay binding {}", b.0))?;
            Ok((sa, sb))
        })?;
        for s in [&sock_a, &sock_b] {
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let impair: [Arc<Mutex<State>>; 2] = Default::default();
        // a → b: received on sock_a, sent from sock_b to b; and the reverse.
        for (from, to, dest, impair) in [
            (sock_a.try_clone()?, sock_b.try_clone()?, b.1, impair[0].clone()),
            (sock_b, sock_a, a.1, impair[1].clone()),
        ] {
            let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let stop_rx = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop_rx.load(Ordering::Relaxed) {
                    let (out, extra) = match from.recv_from(&mut buf) {
                        Ok((n, _)) => {
                            let mut state = impair.lock().unwrap();
                            let extra = state.jitter(&buf[..n]);
                            (state.pass(buf[..n].to_vec()), extra)
                        }
                        // Quiet for a read timeout: a held message goes on.
                        Err(_) => (impair.lock().unwrap().flush().into_iter().collect(), Duration::ZERO),
                    };
                    let due = Instant::now() + delay + extra;
                    if out.into_iter().any(|m| tx.send((due, m)).is_err()) {
                        break;
                    }
                }
            }));
            threads.push(std::thread::spawn(move || {
                // Ends when the receiving thread drops its sender.
                for (due, data) in rx {
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let _ = to.send_to(&data, dest);
                }
            }));
        }
        Ok(Self { stop, threads, impair })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
