//! The formats a page is served in, and which one a scraper's `Accept` header asks for.

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

/// The format a scraper asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    pub exposition: Exposition,
    pub gzip: bool,
}

impl Format {
    pub const TEXT: Self = Self { exposition: Exposition::Text, gzip: false };
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
    use super::Exposition::{self, *};

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
