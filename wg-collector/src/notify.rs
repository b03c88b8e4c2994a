//! systemd's service notification protocol (sd_notify): `READY=1` once the programs are
//! attached and the endpoint listens (the unit is `Type=notify`, so `systemctl start` returns
//! then, and units ordered after it find it serving), `STATUS=` with what it follows, and
//! `WATCHDOG=1` from the poll loop after each refresh that completes, so a collector whose
//! refreshes hang is restarted (`WatchdogSec=`). Each message is one datagram to the socket in
//! `$NOTIFY_SOCKET`; without it (not started by systemd) nothing is sent.

use std::{
    io,
    os::unix::net::{SocketAddr, UnixDatagram},
    path::PathBuf,
    time::Duration,
};

/// Where to send notifications, if anywhere.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// The watchdog interval systemd expects pings within (`WATCHDOG_USEC`), if it watches us.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment systemd gives a service: `NOTIFY_SOCKET` (a path, or `@name` for
    /// an abstract socket) and `WATCHDOG_USEC` (for this process only, if `WATCHDOG_PID`
    /// names another).
    pub fn from_env() -> io::Result<Self> {
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|_| std::env::var("WATCHDOG_PID").map_or(true, |p| p == std::process::id().to_string()))
            .map(Duration::from_micros);
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(Notifier { target: None, watchdog: None }),
            Some(s) => Self::to(&s.to_string_lossy(), watchdog),
        }
    }

    /// To the socket `name` (a path, or `@name`).
    pub fn to(name: &str, watchdog: Option<Duration>) -> io::Result<Self> {
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name.as_bytes())?
            }
            None => SocketAddr::from_pathname(PathBuf::from(name))?,
        };
        Ok(Notifier { target: Some((UnixDatagram::unbound()?, addr)), watchdog })
    }

    /// Whether systemd listens.
    pub fn active(&self) -> bool {
        self.target.is_some()
    }

    /// How often to ping: half the watchdog interval, as sd_watchdog_enabled(3) advises.
    pub fn ping_every(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    fn send(&self, msg: &str) -> io::Result<()> {
        match &self.target {
            Some((sock, addr)) => sock.send_to_addr(msg.as_bytes(), addr).map(|_| ()),
            None => Ok(()),
        }
    }

    /// The service is up; `status` says what it does.
    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    pub fn status(&self, status: &str) -> io::Result<()> {
        self.send(&format!("STATUS={}", one_line(status)))
    }

    /// Still alive (only where systemd watches).
    pub fn ping(&self) -> io::Result<()> {
        if self.watchdog.is_some() {
            self.send("WATCHDOG=1")?;
        }
        Ok(())
    }
}

/// A status is one line of the protocol.
fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a listening socket, as systemd's: a path one and an abstract one.
    #[test]
    fn speaks_the_protocol() {
        let path = std::env::temp_dir().join(format!("wg-notify-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let systemd = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::to(path.to_str().unwrap(), Some(Duration::from_secs(30))).unwrap();
        assert_eq!(n.ping_every(), Some(Duration::from_secs(15)));
        n.ready("2 devices\n14 peers").unwrap();
        n.ping().unwrap();
        n.status("1 device").unwrap();
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for _ in 0..3 {
            let len = systemd.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        assert_eq!(got, ["READY=1\nSTATUS=2 devices 14 peers", "WATCHDOG=1", "STATUS=1 device"]);
        std::fs::remove_file(&path).unwrap();

        let name = format!("wg-notify-test-{}", std::process::id());
        let systemd = {
            use std::os::linux::net::SocketAddrExt;
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap()
        };
        // Not watched: no pings.
        let n = Notifier::to(&format!("@{name}"), None).unwrap();
        n.ping().unwrap();
        n.ready("up").unwrap();
        let len = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up");
    }
}
