//! Fetches a metrics page over plain HTTP and reads the Prometheus text format back into
//! samples, so tests can ask for one value by name and labels.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{bail, Context, Result};

/// GET `path` from `addr`; returns the body of a 200 answer.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let (head, body) = http_get_with(addr, path, &[])?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body)
}

/// GET `path` with extra request headers; returns the response head and body, whatever
/// the status.
pub fn http_get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<(String, String)> {
    let (head, body) = http_get_bytes(addr, path, headers)?;
    Ok((head, String::from_utf8(body).context("a body that is not UTF-8 (compressed?)")?))
}

/// Like [`http_get_with`], the body as bytes (a compressed one, say).
pub fn http_get_bytes(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<(String, Vec<u8>)> {
    let mut raw = Vec::new();
    let (head, body) = http_get_into(addr, path, headers, &mut raw)?;
    raw.drain(..body);
    Ok((head, raw))
}

/// GET `path`, the whole answer read into `raw` (appended); returns the head and where the
/// body starts in `raw`.
pub fn http_get_into(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    raw: &mut Vec<u8>,
) -> Result<(String, usize)> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let start = raw.len();
    s.read_to_end(raw)?;
    let end = raw[start..].windows(4).position(|w| w == b"\r\n\r\n").context("no HTTP header end")?;
    Ok((String::from_utf8_lossy(&raw[start..start + end]).into_owned(), start + end + 4))
}

/// One sample: name, labels in order, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed metrics page.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Result<Self> {
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').with_context(|| format!("no value: {line}"))?;
            let value: f64 = value.parse().with_context(|| format!("bad value: {line}"))?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    (n, parse_labels(rest.strip_suffix('}').with_context(|| format!("bad labels: {line}"))?)?)
                }
                None => (series, Vec::new()),
            };
            samples.push(Sample { name: name.to_string(), labels, value });
        }
        Ok(Self { samples, text: text.to_string() })
    }

    /// Samples of `name` whose labels include all of `want`.
    pub fn find<'a>(&'a self, name: &'a str, want: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name && want.iter().all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
    }

    /// The one sample of `name` with labels `want`; `None` if there is none, an error if
    /// there are several.
    pub fn get(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let mut it = self.find(name, want);
        let first = it.next()?.value;
        assert!(it.next().is_none(), "{name} {want:?} matches several series");
        Some(first)
    }

    /// Like [`get`](Self::get) but 0 when the series does not exist (a counter not yet
    /// created).
    pub fn get_or_zero(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.get(name, want).unwrap_or(0.0)
    }

    /// The q-quantile of histogram `name` (without `_bucket`) for the series with labels
    /// `want`, interpolated linearly inside its bucket as Prometheus' histogram_quantile
    /// does; with the bucket's sample count.
    pub fn quantile(&self, name: &str, want: &[(&str, &str)], q: f64) -> Option<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut cum: Vec<(f64, f64)> = self
            .find(&bucket, want)
            .map(|s| {
                let le = s.labels.iter().find(|(k, _)| k == "le").map(|(_, v)| v.as_str()).unwrap_or("+Inf");
                (if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, s.value)
            })
            .collect();
        cum.sort_by(|x, y| x.0.total_cmp(&y.0));
        let total = cum.last()?.1;
        if total == 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut prev_le, mut prev_c) = (0.0, 0.0);
        for (le, c) in cum {
            if c >= rank {
                if le.is_infinite() {
                    return Some((prev_le, total));
                }
                return Some((prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c), total));
            }
            (prev_le, prev_c) = (le, c);
        }
        None
    }

    /// Whether any series of any family carries label `key` = `value`.
    pub fn mentions(&self, key: &str, value: &str) -> bool {
        self.samples.iter().any(|s| s.labels.iter().any(|(k, v)| k == key && v == value))
    }
}

fn parse_labels(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").with_context(|| format!("bad label in {s}"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => break,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.with_context(|| format!("unterminated label value in {s}"))?;
        out.push((key.trim_start_matches(',').to_string(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Ok(out)
}

/// A TCP connection to `to` from source address `from` (another loopback address is another
/// client to the server).
pub fn connect_from(from: std::net::Ipv4Addr, to: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = to else { return Err(std::io::Error::other("IPv4 only")) };
    let sin = |a: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.octets()) },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: a new socket, owned by the TcpStream made from it (closed on error below).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = std::net::TcpStream::from_raw_fd(fd);
        let local = sin(from, 0);
        if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sin(*to.ip(), to.port());
        if libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Raises this process's soft limit on open files to the hard one (tests that hold many
/// connections); returns the new soft limit.
pub fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct given.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_with_escaped_labels() {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"uote\"} 5\nup 1\nh{le=\"+Inf\"} 2.5e3\n",
        )
        .unwrap();
        assert_eq!(m.get("x_total", &[("b", "q\"uote")]), Some(5.0));
        assert_eq!(m.get("up", &[]), Some(1.0));
        assert_eq!(m.get("h", &[("le", "+Inf")]), Some(2500.0));
        assert_eq!(m.get_or_zero("nope", &[]), 0.0);
    }
}
