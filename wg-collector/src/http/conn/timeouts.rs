//! The deadlines' lengths: defaults, what the flags and the web configuration file set, and
//! durations as Prometheus writes them.

use std::time::Duration;

/// How long a connection may take for each part of an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From the connection's start (or a later request's first byte) to the end of the
    /// request's headers; also the TLS handshake's limit.
    pub read_header: Duration,
    /// Between the end of an answer and the first byte of the next request.
    pub idle: Duration,
    /// A write of the answer that makes no progress for this long (the reader stopped).
    pub write: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { read_header: Duration::from_secs(10), idle: Duration::from_secs(120), write: Duration::from_secs(60) }
    }
}

/// Timeouts some of which are set (by flag, or in the web configuration file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeoutSettings {
    pub read_header: Option<Duration>,
    pub idle: Option<Duration>,
    pub write: Option<Duration>,
}

impl TimeoutSettings {
    /// These where set, else `file`'s where set, else the defaults.
    pub fn over(self, file: TimeoutSettings) -> Timeouts {
        let d = Timeouts::default();
        Timeouts {
            read_header: self.read_header.or(file.read_header).unwrap_or(d.read_header),
            idle: self.idle.or(file.idle).unwrap_or(d.idle),
            write: self.write.or(file.write).unwrap_or(d.write),
        }
    }
}

/// A duration as Prometheus writes them ("10s", "1m30s", "500ms", "2h"), or seconds ("10",
/// "0.5"); it must be above zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?}: not a duration (10s, 1m30s, 500ms, or seconds)");
    let total = if let Ok(secs) = s.parse::<f64>() {
        Duration::try_from_secs_f64(secs).map_err(|_| bad())?
    } else {
        let mut total = Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let one = match &rest[..unit] {
                "ms" => Duration::from_millis(1),
                "s" => Duration::from_secs(1),
                "m" => Duration::from_secs(60),
                "h" => Duration::from_secs(3600),
                _ => return Err(bad()),
            };
            total += one * n as u32;
            rest = &rest[unit..];
        }
        total
    };
    if total.is_zero() {
        return Err(format!("{s:?}: must be above zero"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_prometheus_writes_them() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_duration("0s").unwrap_err().contains("above zero"));
        for bad in ["", "s", "10x", "-1", "1.5m", "ten"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_over_the_file_over_the_defaults() {
        let flags = TimeoutSettings { read_header: Some(Duration::from_secs(3)), ..Default::default() };
        let file = TimeoutSettings {
            read_header: Some(Duration::from_secs(5)),
            idle: Some(Duration::from_secs(7)),
            write: None,
        };
        assert_eq!(
            flags.over(file),
            Timeouts {
                read_header: Duration::from_secs(3),
                idle: Duration::from_secs(7),
                write: Timeouts::default().write
            }
        );
    }
}
