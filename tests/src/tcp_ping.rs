//! A TCP round-trip probe, the TCP counterpart of `ping`: an echo server in one namespace,
//! a client in another that sends one byte at a time and times each answer at the
//! application, and takes each connect's SYN → SYN-ACK time from a capture on the wire.

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

use crate::{
    capture::{Capture, Packet},
    netns,
    packets::{ACK, SYN, TCP},
};

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
/// fresh connections, from namespace `ns` out of its interface `iface`; returns (round-trip
/// times as the application saw them, the SYN → SYN-ACK time of each of the `1 + connects`
/// connections as a capture on `iface` saw it).
///
/// A connect's truth is taken on the wire, not by the clock around `connect()` nor by the
/// kernel's RTT sample: on a loaded 2-core CI host both held the connecting thread's wakeup
/// (the SYN-ACK waits in the socket's backlog while that thread still holds the lock), which
/// doubled a 0.7 ms handshake (1.6 ms seen).
pub fn probe(
    ns: &str,
    iface: &str,
    server: SocketAddr,
    count: usize,
    connects: usize,
    gap: Duration,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let capture = Capture::start(ns, iface)?;
    let (rtts, ports) = netns::within(ns, move || {
        let mut rtts = Vec::new();
        let mut c = TcpStream::connect(server)?;
        let mut ports = vec![c.local_addr()?.port()];
        c.set_nodelay(true)?;
        let mut b = [7u8; 1];
        for _ in 0..count {
            std::thread::sleep(gap);
            let t = Instant::now();
            c.write_all(&b)?;
            c.read_exact(&mut b)?;
            rtts.push(t.elapsed());
        }
        for _ in 0..connects {
            std::thread::sleep(gap);
            ports.push(TcpStream::connect(server)?.local_addr()?.port());
        }
        Ok((rtts, ports))
    })?;
    Ok((rtts, handshakes(&capture.drain()?, &ports)?))
}

/// The time from each connection's SYN, sent from local port `port`, to its SYN-ACK, in the
/// order of `ports`. A connection whose SYN went twice is refused: which SYN was answered is
/// unknowable (Karn's rule), so its time would be a guess.
pub fn handshakes(packets: &[Packet], ports: &[u16]) -> Result<Vec<Duration>> {
    ports
        .iter()
        .map(|&port| {
            let find = |outgoing: bool, flags: u8| {
                packets.iter().filter(move |p| {
                    p.outgoing == outgoing
                        && p.l4(TCP).filter(|t| t.len() >= 20).is_some_and(|t| {
                            let local = if outgoing { &t[0..2] } else { &t[2..4] };
                            local == port.to_be_bytes() && t[13] & (SYN | ACK) == flags
                        })
                })
            };
            let syns: Vec<_> = find(true, SYN).collect();
            let answer = find(false, SYN | ACK).next();
            match (syns.as_slice(), answer) {
                ([syn], Some(answer)) => Ok(answer.at.saturating_sub(syn.at)),
                ([], _) => anyhow::bail!("no SYN from port {port} captured"),
                ([_], None) => anyhow::bail!("no SYN-ACK to port {port} captured"),
                (more, _) => anyhow::bail!("port {port} sent its SYN {} times", more.len()),
            }
        })
        .collect()
}

/// The median of some durations, in seconds.
pub fn median(v: &[Duration]) -> f64 {
    let mut s: Vec<f64> = v.iter().map(|d| d.as_secs_f64()).collect();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packets::{ipv4_with, ipv6_with, tcp_segment};

    fn at(ms: u64, outgoing: bool, data: Vec<u8>) -> Packet {
        Packet { at: Duration::from_millis(ms), outgoing, data }
    }

    #[test]
    fn handshakes_pair_each_syn_with_its_syn_ack_by_local_port() {
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let (a6, b6) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let seg = |sport, dport, flags| tcp_segment(sport, dport, 1, 0, flags, &[], 0);
        let packets = vec![
            at(10, true, ipv4_with(a, b, TCP, &seg(40000, 7007, SYN))),
            at(11, true, ipv6_with(a6, b6, TCP, &[], &seg(40001, 7007, SYN))),
            // Another flow's SYN-ACK and a bare ACK to the port must not be taken.
            at(12, false, ipv4_with(b, a, TCP, &seg(7007, 40002, SYN | ACK))),
            at(12, false, ipv4_with(b, a, TCP, &seg(7007, 40000, ACK))),
            at(13, false, ipv4_with(b, a, TCP, &seg(7007, 40000, SYN | ACK))),
            at(15, false, ipv6_with(b6, a6, TCP, &[], &seg(7007, 40001, SYN | ACK))),
        ];
        let got = handshakes(&packets, &[40001, 40000]).unwrap();
        assert_eq!(got, [Duration::from_millis(4), Duration::from_millis(3)]);
        let err = handshakes(&packets, &[40002]).unwrap_err().to_string();
        assert_eq!(err, "no SYN from port 40002 captured");
        let again = [packets[0].data.clone(), packets[0].data.clone()].map(|d| at(10, true, d));
        let err = handshakes(&again, &[40000]).unwrap_err().to_string();
        assert_eq!(err, "port 40000 sent its SYN 2 times");
    }
}
