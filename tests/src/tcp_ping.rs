//! A TCP round-trip probe, the TCP counterpart of `ping`: an echo server in one namespace,
//! a client in another that sends one byte at a time and times each answer at the
//! application, and times each connect (SYN → SYN-ACK).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::netns;

/// Echoes every byte back on every connection, until dropped.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl EchoServer {
    pub fn start(ns: &str, addr: SocketAddr) -> Result<Self> {
        let listener = netns::within(ns, move || Ok(TcpListener::bind(addr)?))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let _ = c.set_nodelay(true);
                            let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                            let mut b = [0u8; 1];
                            while !s.load(Ordering::Relaxed) {
                                match c.read(&mut b) {
                                    Ok(0) => break,
                                    Ok(_) => {
                                        if c.write_all(&b).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e)
                                        if e.kind() == std::io::ErrorKind::WouldBlock
                                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => break,
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Self { stop, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Round trips of one byte over one connection, `count` of them `gap` apart, and `connects`
/// fresh connections; returns (round-trip times, connect times) as the client saw them.
pub fn probe(
    ns: &str,
    server: SocketAddr,
    count: usize,
    connects: usize,
    gap: Duration,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    netns::within(ns, move || {
        let mut rtts = Vec::new();
        let mut c = TcpStream::connect(server)?;
        c.set_nodelay(true)?;
        let mut b = [7u8; 1];
        for _ in 0..count {
            std::thread::sleep(gap);
            let t = Instant::now();
            c.write_all(&b)?;
            c.read_exact(&mut b)?;
            rtts.push(t.elapsed());
        }
        let mut connect_times = Vec::new();
        for _ in 0..connects {
            std::thread::sleep(gap);
            let t = Instant::now();
            let s = TcpStream::connect(server)?;
            connect_times.push(t.elapsed());
            drop(s);
        }
        Ok((rtts, connect_times))
    })
}

/// The median of some durations, in seconds.
pub fn median(v: &[Duration]) -> f64 {
    let mut s: Vec<f64> = v.iter().map(|d| d.as_secs_f64()).collect();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}
