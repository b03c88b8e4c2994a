//! The formats a page is served in, and which one a scraper's `Accept` and `Accept-Encoding`
//! headers ask for.

/// The exposition format of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    /// Prometheus text 0.0.4: what a scraper gets unless it asks for another.
    Text,
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
    /// Prometheus protobuf (delimited `io.prometheus.client.MetricFamily` messages): the
    /// format that carries native histograms, beside the classic buckets.
    Protobuf,
}

/// How the page is compressed (HTTP content coding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    /// What Prometheus asks for by default.
    Gzip,
    /// What Prometheus asks for with `--enable-feature=zstd-scrape` (client_golang serves it
    /// too): its window reaches a peer's key in the next family, which deflate's does not.
    Zstd,
}

impl Encoding {
    /// The Content-Encoding header's value (none for identity).
    pub fn header(self) -> Option<&'static str> {
        match self {
            Self::Identity => None,
            Self::Gzip => Some("gzip"),
            Self::Zstd => Some("zstd"),
        }
    }

    /// The coding an `Accept-Encoding` header (its values joined with commas) prefers: the
    /// highest `q` of zstd and gzip (`*` stands for both), zstd on a tie; identity when
    /// neither is acceptable (`q=0` refuses a coding).
    pub fn negotiate(accept_encoding: &str) -> Self {
        let (mut zstd, mut gzip, mut any) = (None, None, None);
        for coding in accept_encoding.split(',') {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(1.0, |(_, v)| v.trim().parse().unwrap_or(0.0));
            match name.as_str() {
                "zstd" => zstd = Some(q),
                "gzip" | "x-gzip" => gzip = Some(q),
                "*" => any = Some(q),
                _ => {}
            }
        }
        let (zstd, gzip) = (zstd.or(any).unwrap_or(0.0), gzip.or(any).unwrap_or(0.0));
        match (zstd, gzip) {
            (z, g) if z > 0.0 && z >= g => Self::Zstd,
            (_, g) if g > 0.0 => Self::Gzip,
            _ => Self::Identity,
        }
    }
}

/// The format a scraper asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    pub exposition: Exposition,
    pub encoding: Encoding,
}

impl Format {
    pub const TEXT: Self = Self { exposition: Exposition::Text, encoding: Encoding::Identity };
}

impl Exposition {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Protobuf => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
            }
        }
    }

    /// The format an `Accept` header (its values joined with commas) prefers: the media
    /// range with the highest `q` among those served (the first of equals), text when none
    /// is. Protobuf only as `proto=io.prometheus.client.MetricFamily; encoding=delimited`,
    /// the one Prometheus reads.
    pub fn negotiate(accept: &str) -> Self {
        let mut best: Option<(f64, Self)> = None;
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let (mut q, mut proto, mut encoding) = (1.0, None, None);
            for p in parts {
                let Some((k, v)) = p.split_once('=') else { continue };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.parse().unwrap_or(0.0),
                    "proto" => proto = Some(v.to_string()),
                    "encoding" => encoding = Some(v.to_string()),
                    _ => {}
                }
            }
            let format = match media.as_str() {
                "application/vnd.google.protobuf"
                    if proto.as_deref() == Some("io.prometheus.client.MetricFamily")
                        && encoding.as_deref() == Some("delimited") =>
                {
                    Self::Protobuf
                }
                "application/openmetrics-text" => Self::OpenMetrics,
                "text/plain" | "text/*" | "*/*" => Self::Text,
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, format));
            }
        }
        best.map_or(Self::Text, |(_, f)| f)
    }
}

#[cfg(test)]
mod tests {
    use super::{
        Encoding,
        Exposition::{self, *},
    };

    #[test]
    fn negotiates_the_coding_by_q() {
        use Encoding::*;
        // Prometheus by default, and with --enable-feature=zstd-scrape.
        assert_eq!(Encoding::negotiate("gzip"), Gzip);
        assert_eq!(Encoding::negotiate("zstd, gzip"), Zstd);
        assert_eq!(Encoding::negotiate(""), Identity);
        assert_eq!(Encoding::negotiate("identity"), Identity);
        assert_eq!(Encoding::negotiate("br, deflate"), Identity);
        // q decides; a tie goes to zstd; q=0 refuses, also through `*`.
        assert_eq!(Encoding::negotiate("zstd;q=0.5, gzip;q=0.8"), Gzip);
        assert_eq!(Encoding::negotiate("GZIP;Q=0.8, zstd ; q=0.8"), Zstd);
        assert_eq!(Encoding::negotiate("gzip;q=0"), Identity);
        assert_eq!(Encoding::negotiate("gzip;q=0, *"), Zstd);
        assert_eq!(Encoding::negotiate("zstd;q=0, *;q=0.1"), Gzip);
        assert_eq!(Encoding::negotiate("*;q=0"), Identity);
        assert_eq!(Encoding::negotiate("x-gzip, deflate;q=0.5"), Gzip);
        assert_eq!(Encoding::negotiate("gzip;q=nonsense"), Identity);
    }

    #[test]
    fn negotiates_as_prometheus_asks() {
        // Prometheus 2.42 with --enable-feature=native-histograms.
        let native =
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,\
                      text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(Exposition::negotiate(native), Protobuf);
        // Prometheus 2.42 without it.
        let om = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                  text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Exposition::negotiate(om), OpenMetrics);
        assert_eq!(Exposition::negotiate(""), Text);
        assert_eq!(Exposition::negotiate("*/*"), Text);
        assert_eq!(Exposition::negotiate("application/json"), Text);
        // Another protobuf, or the text one of it, is not ours.
        assert_eq!(
            Exposition::negotiate(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text"
            ),
            Text
        );
        assert_eq!(Exposition::negotiate("application/vnd.google.protobuf;proto=other;encoding=delimited"), Text);
        // q decides, then order; q=0 refuses.
        assert_eq!(Exposition::negotiate("text/plain;q=0.9, application/openmetrics-text;q=0.8"), Text);
        assert_eq!(Exposition::negotiate("application/openmetrics-text, text/plain"), OpenMetrics);
        assert_eq!(Exposition::negotiate("application/openmetrics-text;q=0, text/plain;q=0.1"), Text);
        assert_eq!(
            Exposition::negotiate(
                "Application/Vnd.Google.Protobuf; proto=\"io.prometheus.client.MetricFamily\"; encoding=delimited"
            ),
            Protobuf
        );
    }
}
