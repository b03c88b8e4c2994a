//! The cross-platform userspace API (UAPI) of wireguard-go, boringtun and friends: a Unix
//! socket per device, `get=1` answered by `key=value` lines that end with `errno=N`.

use std::{
    io::{Read, Write},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use zeroize::Zeroizing;

use super::{Device, Implementation, Key, Peer};

#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    #[error("UAPI socket {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("UAPI socket {path}: line {line}: {what}: {text:?}")]
    Parse { path: String, line: usize, what: &'static str, text: String },
    #[error("UAPI socket {path}: the device answered errno={errno}")]
    Errno { path: String, errno: i64 },
}

/// The longest a whole reading may take, from connecting to the last byte: a device that
/// answers slowly, or not at all, costs at most this.
pub const TIMEOUT: Duration = Duration::from_secs(2);

impl UapiError {
    /// The message, with what `r` hides left out of the line it quotes.
    pub fn redacted(&self, r: &crate::redact::Redact) -> String {
        match self {
            Self::Parse { path, line, what, text } => {
                format!("UAPI socket {path}: line {line}: {what}: {:?}", r.uapi_line(text))
            }
            e => e.to_string(),
        }
    }

    /// What went wrong, as wireguard_collector_device_read_errors_total's `kind` says it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timeout",
                std::io::ErrorKind::UnexpectedEof => "truncated",
                std::io::ErrorKind::InvalidData => "malformed",
                _ => "io",
            },
            Self::Parse { .. } => "malformed",
            Self::Errno { .. } => "errno",
        }
    }
}

/// Asks the device behind `socket` for its full state.
///
/// `now` is the current time since the Unix epoch: boringtun reports the time *since* the
/// last handshake where the protocol (and wireguard-go) report the time *of* it.
pub fn get(socket: &Path, name: &str, implementation: &Implementation, now: Duration) -> Result<Device, UapiError> {
    let path = socket.display().to_string();
    let io = |source| UapiError::Io { path: path.clone(), source };
    let deadline = Instant::now() + TIMEOUT;
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.write_all(b"get=1\n\n").map_err(io)?;
    let answer = read_answer(&mut stream, deadline).map_err(io)?;
    let text = std::str::from_utf8(&answer).map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    parse(text, &path, name, implementation, now)
}

/// Bytes asked of the socket at a time (a 10k-peer answer is ~3 MB).
const CHUNK: usize = 64 * 1024;

/// The answer to `get=1`, read in large chunks: line by line (a buffered `read_line` per
/// line, each checking UTF-8) took longer than wireguard-go took to write it (3 of 5 ms at 1k
/// peers). It holds the device's private key, so every buffer it passes through is zeroed
/// when dropped, also the smaller ones left behind as it grows. An answer not complete by
/// `deadline` (a device that hangs, or trickles) is a timeout.
fn read_answer(stream: &mut UnixStream, deadline: Instant) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut chunk = Zeroizing::new(vec![0u8; CHUNK]);
    let mut answer = Zeroizing::new(Vec::with_capacity(CHUNK));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no complete answer within {TIMEOUT:?} ({} bytes so far)", answer.len()),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut chunk) {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            r => r?,
        };
        if n == 0 {
            // Closed before the errno line: a part of the state is no state (its missing
            // peers would read as removed).
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the answer ended after {} bytes, without its errno line", answer.len()),
            ));
        }
        if answer.len() + n > answer.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity((answer.len() + n).max(2 * answer.capacity())));
            bigger.extend_from_slice(&answer);
            answer = bigger;
        }
        answer.extend_from_slice(&chunk[..n]);
        if complete(&answer) {
            break;
        }
    }
    Ok(answer)
}

/// Whether an answer is whole: it ends with a blank line, or its last line is `errno=N`
/// (the connection then stays open for the next request).
fn complete(answer: &[u8]) -> bool {
    if answer.ends_with(b"\n\n") {
        return true;
    }
    let Some(lines) = answer.strip_suffix(b"\n") else { return false };
    let last = lines.rsplit(|b| *b == b'\n').next().unwrap_or(lines);
    last.starts_with(b"errno=")
}

/// Parses a `get=1` answer. Unknown keys are ignored (the protocol grows); malformed values
/// of keys we use are errors that name the line.
pub fn parse(
    text: &str,
    path: &str,
    name: &str,
    implementation: &Implementation,
    now: Duration,
) -> Result<Device, UapiError> {
    let mut dev = Device { name: name.to_string(), ..Device::default() };
    let mut peer: Option<Peer> = None;
    let mut handshake = (0u64, 0u32);
    let mut saw_handshake = false;
    let finish = |peer: Option<Peer>, handshake: (u64, u32), saw: bool, dev: &mut Device| {
        if let Some(mut p) = peer {
            p.last_handshake = handshake_time(implementation, handshake, saw, now);
            dev.peers.push(p);
        }
    };
    for (i, line) in lines(text).enumerate() {
        if line.is_empty() {
            continue;
        }
        let err = |what| UapiError::Parse { path: path.to_string(), line: i + 1, what, text: redact(line) };
        let (k, v) = key_value(line).ok_or_else(|| err("not key=value"))?;
        match (k, peer.as_mut()) {
            ("errno", _) => {
                let errno: i64 = v.parse().map_err(|_| err("bad errno"))?;
                if errno != 0 {
                    return Err(UapiError::Errno { path: path.to_string(), errno });
                }
            }
            ("private_key", None) => {
                let private = Zeroizing::new(Key::from_hex(v).ok_or_else(|| err("bad private key"))?.0);
                dev.public_key = Some(Key::public_of(&private));
            }
            ("listen_port", None) => dev.listen_port = v.parse().map_err(|_| err("bad listen_port"))?,
            ("fwmark", None) => dev.fwmark = v.parse().map_err(|_| err("bad fwmark"))?,
            ("public_key", _) => {
                finish(peer.take(), handshake, saw_handshake, &mut dev);
                handshake = (0, 0);
                saw_handshake = false;
                peer = Some(Peer::new(Key::from_hex(v).ok_or_else(|| err("bad public key"))?));
            }
            ("endpoint", Some(p)) => p.endpoint = Some(v.parse::<SocketAddr>().map_err(|_| err("bad endpoint"))?),
            ("allowed_ip", Some(p)) => {
                p.allowed_ips.push(v.parse::<IpNet>().map_err(|_| err("bad allowed_ip"))?.trunc())
            }
            ("rx_bytes", Some(p)) => p.rx_bytes = v.parse().map_err(|_| err("bad rx_bytes"))?,
            ("tx_bytes", Some(p)) => p.tx_bytes = v.parse().map_err(|_| err("bad tx_bytes"))?,
            ("persistent_keepalive_interval", Some(p)) => {
                p.persistent_keepalive = v.parse().map_err(|_| err("bad persistent_keepalive_interval"))?
            }
            ("last_handshake_time_sec", Some(_)) => {
                handshake.0 = v.parse().map_err(|_| err("bad last_handshake_time_sec"))?;
                saw_handshake = true;
            }
            ("last_handshake_time_nsec", Some(_)) => {
                handshake.1 = v.parse().map_err(|_| err("bad last_handshake_time_nsec"))?;
                saw_handshake = true;
            }
            _ => {}
        }
    }
    finish(peer.take(), handshake, saw_handshake, &mut dev);
    Ok(dev)
}

/// The lines of an answer, without `\n` or `\r\n` (as `str::lines`). A plain byte scan: lines are ~30 bytes, where `str::lines` and `split_once` (a memchr
/// call each) cost more than the bytes (a third of parsing 1k peers).
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.bytes().position(|b| b == b'\n').unwrap_or(rest.len());
        // Both cuts are next to an ASCII byte: char boundaries.
        let line = &rest[..end];
        rest = &rest[(end + 1).min(rest.len())..];
        Some(line.strip_suffix('\r').unwrap_or(line))
    })
}

/// `key=value`, split at the first `=`.
fn key_value(line: &str) -> Option<(&str, &str)> {
    let at = line.bytes().position(|b| b == b'=')?;
    Some((&line[..at], &line[at + 1..]))
}

fn handshake_time(
    implementation: &Implementation,
    (sec, nsec): (u64, u32),
    saw: bool,
    now: Duration,
) -> Option<Duration> {
    if !saw {
        return None;
    }
    let t = Duration::new(sec, nsec);
    match implementation {
        // boringtun 0.7 writes the time elapsed since the handshake, and no line at all
        // when there was none.
        Implementation::Boringtun => now.checked_sub(t),
        _ if t.is_zero() => None,
        _ => Some(t),
    }
}

/// A line for an error message, with key material cut out.
fn redact(line: &str) -> String {
    match line.split_once('=') {
        Some((k @ ("private_key" | "preshared_key"), _)) => format!("{k}=(redacted)"),
        _ => line.chars().take(120).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIV: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    const PUB_A: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    const PUB_B: &str = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";

    fn answer(handshake: &str) -> String {
        format!(
            "private_key={PRIV}\nlisten_port=51820\nfwmark=7\n\
             public_key={PUB_A}\npreshared_key=0000000000000000000000000000000000000000000000000000000000000000\n\
             protocol_version=1\nendpoint=10.200.0.2:51820\n{handshake}\
             tx_bytes=1000\nrx_bytes=2000\npersistent_keepalive_interval=25\n\
             allowed_ip=10.99.0.2/32\nallowed_ip=10.98.0.7/24\n\
             public_key={PUB_B}\nendpoint=[fd00::2]:51821\nallowed_ip=fd99::/64\n\
             errno=0\n"
        )
    }

    #[test]
    fn parses_wireguard_go_answer() {
        let now = Duration::from_secs(2_000_000_000);
        let text = answer("last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n");
        let d = parse(&text, "s", "wg0", &Implementation::WireguardGo, now).unwrap();
        assert_eq!(d.name, "wg0");
        assert_eq!(d.public_key.unwrap().to_hex(), PUB_A);
        assert_eq!((d.listen_port, d.fwmark), (51820, 7));
        assert_eq!(d.peers.len(), 2);
        let a = &d.peers[0];
        assert_eq!(a.public_key.to_hex(), PUB_A);
        assert_eq!(a.endpoint, Some("10.200.0.2:51820".parse().unwrap()));
        assert_eq!((a.tx_bytes, a.rx_bytes, a.persistent_keepalive), (1000, 2000, 25));
        // Host bits are cleared, as WireGuard itself does.
        assert_eq!(a.allowed_ips, vec!["10.99.0.2/32".parse::<IpNet>().unwrap(), "10.98.0.0/24".parse().unwrap()]);
        assert_eq!(a.last_handshake, Some(Duration::new(1_700_000_000, 5)));
        let b = &d.peers[1];
        assert_eq!(b.endpoint, Some("[fd00::2]:51821".parse().unwrap()));
        assert_eq!(b.last_handshake, None);
    }

    #[test]
    fn crlf_lines_parse_the_same() {
        let now = Duration::from_secs(2_000_000_000);
        let text = answer("last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n");
        let crlf = text.replace('\n', "\r\n");
        let (a, b) = (
            parse(&text, "s", "wg0", &Implementation::WireguardGo, now),
            parse(&crlf, "s", "wg0", &Implementation::WireguardGo, now),
        );
        assert_eq!(format!("{:?}", a.unwrap()), format!("{:?}", b.unwrap()));
    }

    #[test]
    fn an_answer_is_whole_at_a_blank_line_or_its_errno() {
        for (text, whole) in [
            ("listen_port=1\n", false),
            ("listen_port=1\nerr", false),
            ("listen_port=1\nerrno=0", false),
            ("listen_port=1\nerrno=0\n", true),
            ("errno=0\n", true),
            ("listen_port=1\n\n", true),
            ("", false),
        ] {
            assert_eq!(complete(text.as_bytes()), whole, "{text:?}");
        }
    }

    #[test]
    fn zero_handshake_means_never() {
        let text = answer("last_handshake_time_sec=0\nlast_handshake_time_nsec=0\n");
        let d = parse(&text, "s", "wg0", &Implementation::WireguardGo, Duration::from_secs(5)).unwrap();
        assert_eq!(d.peers[0].last_handshake, None);
    }

    #[test]
    fn boringtun_reports_elapsed_time() {
        let now = Duration::from_secs(1_800_000_000);
        let text = answer("last_handshake_time_sec=30\nlast_handshake_time_nsec=0\n");
        let d = parse(&text, "s", "wg0", &Implementation::Boringtun, now).unwrap();
        assert_eq!(d.peers[0].last_handshake, Some(Duration::from_secs(1_799_999_970)));
        assert_eq!(d.peers[1].last_handshake, None);
    }

    #[test]
    fn errors_name_the_line_and_hide_secrets() {
        let e =
            parse("listen_port=x\n", "/run/wireguard/wg0.sock", "wg0", &Implementation::WireguardGo, Duration::ZERO)
                .unwrap_err()
                .to_string();
        assert!(e.contains("/run/wireguard/wg0.sock") && e.contains("line 1") && e.contains("listen_port=x"), "{e}");
        let e = parse("private_key=zz\n", "s", "wg0", &Implementation::WireguardGo, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(e.contains("(redacted)") && !e.contains("zz"), "{e}");
        let e = parse("errno=22\n", "s", "wg0", &Implementation::WireguardGo, Duration::ZERO).unwrap_err().to_string();
        assert!(e.contains("errno=22"), "{e}");
    }

    /// How a fake UAPI server misbehaves.
    #[derive(Clone, Copy)]
    enum Fault {
        /// Reads the request, never answers.
        Hang,
        /// Answers correctly, a byte every 50 ms (a whole answer would take ~20 s).
        Trickle,
        /// Sends the first half of a correct answer, then closes.
        Half,
        /// Answers with a line that is no key=value.
        Garbage,
    }

    /// A UAPI socket that misbehaves on purpose: a fake, as a real daemon does such things
    /// only when broken (the lab test hangs a real boringtun). Serves each connection on a
    /// thread of its own until the test process ends.
    fn faulty(fault: Fault) -> std::path::PathBuf {
        use std::os::unix::net::UnixListener;
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("wg-uapi-fault-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = stream;
                    let mut req = [0u8; 7]; // get=1\n\n
                    let _ = s.read_exact(&mut req);
                    let whole = answer("");
                    match fault {
                        Fault::Hang => std::thread::sleep(Duration::from_secs(30)),
                        Fault::Trickle => {
                            for b in whole.as_bytes() {
                                if s.write_all(&[*b]).is_err() {
                                    return;
                                }
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                        Fault::Half => {
                            let _ = s.write_all(&whole.as_bytes()[..whole.len() / 2]);
                        }
                        Fault::Garbage => {
                            let _ = s.write_all(b"listen_port=51820\nthis is no answer\nerrno=0\n\n");
                        }
                    }
                });
            }
        });
        path
    }

    fn get_from(path: &std::path::Path) -> (Result<Device, UapiError>, Duration) {
        let t0 = Instant::now();
        let r = get(path, "wg0", &Implementation::WireguardGo, Duration::ZERO);
        (r, t0.elapsed())
    }

    #[test]
    fn a_device_that_hangs_or_trickles_costs_one_timeout() {
        for fault in [Fault::Hang, Fault::Trickle] {
            let path = faulty(fault);
            let (r, took) = get_from(&path);
            let e = r.unwrap_err();
            assert_eq!(e.kind(), "timeout");
            let e = e.to_string();
            assert!(e.contains("no complete answer within 2s"), "{e}");
            // The whole reading is bounded, not each read of it (a trickle would go on ~20 s).
            assert!(took >= TIMEOUT && took < TIMEOUT + Duration::from_secs(1), "{took:?}");
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn half_an_answer_or_garbage_is_an_error() {
        let half = faulty(Fault::Half);
        let garbage = faulty(Fault::Garbage);
        let e = get_from(&half).0.unwrap_err();
        assert_eq!(e.kind(), "truncated");
        assert!(e.to_string().contains("without its errno line"), "{e}");
        let e = get_from(&garbage).0.unwrap_err();
        assert_eq!(e.kind(), "malformed");
        assert!(e.to_string().contains("line 2: not key=value"), "{e}");
        std::fs::remove_file(&half).unwrap();
        std::fs::remove_file(&garbage).unwrap();
    }
}
