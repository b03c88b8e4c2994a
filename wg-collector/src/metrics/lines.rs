//! Counter and gauge samples in the text formats, written straight into the family's buffer.
//!
//! prometheus-client writes a sample as a chain of small writes (the name, each label's key,
//! `="`, its value, `"`, ...), each through its encoders; at 10,000 peers, 15 series a peer,
//! that chain was a third of a scrape in the kernel guest's profile, more than sending the
//! page. Here a line is a few appends to the buffer. prometheus-client still writes every
//! family's HELP and TYPE, every histogram and the protobuf format; the tests hold each
//! family's lines here to the text it writes for them, byte for byte, in both text formats.

use super::page::{DeviceLabels, PeerLabels};

/// A label set as the text formats write it.
pub trait TextLabels {
    fn write(&self, l: &mut LabelList);
}

/// The labels of one line: `{` before the first, `,` between, `}` after the last (none at
/// all for an empty set).
pub struct LabelList<'a> {
    out: &'a mut String,
    any: bool,
}

impl LabelList<'_> {
    /// `key="value"`, the value escaped.
    pub fn pair(&mut self, key: &str, value: &str) {
        self.raw(key);
        self.out.push_str("=\"");
        escape_into(self.out, value);
        self.out.push('"');
    }

    /// Labels already rendered (see [`render`]), or a label's key.
    fn raw(&mut self, text: &str) {
        self.out.push(if self.any { ',' } else { '{' });
        self.any = true;
        self.out.push_str(text);
    }
}

/// `labels` as a line writes them, without the braces: to be written in one piece by many
/// lines (PeerLabels::text).
pub fn render(labels: &impl TextLabels) -> String {
    let mut out = String::new();
    labels.write(&mut LabelList { out: &mut out, any: true });
    // The comma before the first label.
    if !out.is_empty() {
        out.remove(0);
    }
    out
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> TextLabels for [(K, V); N] {
    fn write(&self, l: &mut LabelList) {
        for (k, v) in self {
            l.pair(k.as_ref(), v.as_ref());
        }
    }
}

impl<K: AsRef<str>, V: AsRef<str>> TextLabels for Vec<(K, V)> {
    fn write(&self, l: &mut LabelList) {
        for (k, v) in self {
            l.pair(k.as_ref(), v.as_ref());
        }
    }
}

impl<T: TextLabels + ?Sized> TextLabels for &T {
    fn write(&self, l: &mut LabelList) {
        (**self).write(l)
    }
}

impl<A: TextLabels, B: TextLabels> TextLabels for (A, B) {
    fn write(&self, l: &mut LabelList) {
        self.0.write(l);
        self.1.write(l);
    }
}

impl TextLabels for DeviceLabels<'_> {
    fn write(&self, l: &mut LabelList) {
        l.pair("device", self.device);
        if let Some(ns) = self.netns {
            l.pair("netns", ns);
        }
    }
}

impl TextLabels for PeerLabels<'_> {
    fn write(&self, l: &mut LabelList) {
        if let Some(text) = self.text {
            return l.raw(text);
        }
        self.device.write(l);
        l.pair("public_key", self.key);
        if let Some(name) = self.name {
            l.pair("name", name);
        }
    }
}

/// A sample's value as the text formats write it: integers as they are, floats as
/// prometheus-client writes them (its dtoa digits; `+Inf`, `-Inf`, `NaN` as both formats
/// spell them, never met on this page).
pub trait TextValue {
    fn write(&self, out: &mut String);
}

impl TextValue for u64 {
    fn write(&self, out: &mut String) {
        out.push_str(itoa::Buffer::new().format(*self));
    }
}

impl TextValue for i64 {
    fn write(&self, out: &mut String) {
        out.push_str(itoa::Buffer::new().format(*self));
    }
}

impl TextValue for f64 {
    fn write(&self, out: &mut String) {
        if self.is_finite() {
            out.push_str(dtoa::Buffer::new().format_finite(*self));
        } else if self.is_nan() {
            out.push_str("NaN");
        } else {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        }
    }
}

/// `v` as a label value in the text formats: backslash, double quote and newline escaped.
pub fn escape_into(out: &mut String, v: &str) {
    // A fold, not `any`: without the early exit the scan is vectorized (public keys, 44
    // bytes on every per-peer line, need no escapes).
    if !v.bytes().fold(false, |found, b| found | matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The sample lines of one family, appended to its buffer after prometheus-client's HELP
/// and TYPE.
pub struct Lines<'a> {
    out: &'a mut String,
    /// The name the samples have (counters with `_total`).
    name: String,
}

impl<'a> Lines<'a> {
    pub fn new(out: &'a mut String, name: String) -> Self {
        Self { out, name }
    }

    /// `name{labels} value`.
    pub fn sample(&mut self, labels: &impl TextLabels, value: &impl TextValue) {
        self.out.push_str(&self.name);
        let mut list = LabelList { out: self.out, any: false };
        labels.write(&mut list);
        if list.any {
            self.out.push('}');
        }
        self.out.push(' ');
        value.write(self.out);
        self.out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fixture,
        metrics::{encode, Encoding, ExportOptions, Exposition, Format, Page},
    };

    fn line(labels: &impl TextLabels, value: &impl TextValue) -> String {
        let mut out = String::new();
        Lines::new(&mut out, "m_total".into()).sample(labels, value);
        out
    }

    /// Braces only around labels there are; escapes in values, not in keys.
    #[test]
    fn lines_are_written_as_the_text_formats_spell_them() {
        assert_eq!(line(&[] as &[(&str, &str); 0], &7u64), "m_total 7\n");
        assert_eq!(line(&[("a", "x\"y\\z\nw")], &-3i64), "m_total{a=\"x\\\"y\\\\z\\nw\"} -3\n");
        let device = DeviceLabels { device: "wg0", netns: Some("blue") };
        assert_eq!(line(&(device, [("k", "v")]), &0.25f64), "m_total{device=\"wg0\",netns=\"blue\",k=\"v\"} 0.25\n");
        assert_eq!(line(&vec![("a".to_string(), String::new())], &1e21f64), "m_total{a=\"\"} 1e21\n");
        for (v, text) in [(f64::NAN, "NaN"), (f64::INFINITY, "+Inf"), (f64::NEG_INFINITY, "-Inf")] {
            assert_eq!(line(&[] as &[(&str, &str); 0], &v), format!("m_total {text}\n"));
        }
    }

    /// The sample lines the page writes itself (lines.rs) are the text prometheus-client writes
    /// for the same samples, byte for byte: both text formats, every option that changes a
    /// label set, devices in another namespace and odd label values (escapes, an empty name).
    #[test]
    fn written_lines_are_what_prometheus_client_writes() {
        let odd = "we\"ird\\ns\nx";
        let mut other = crate::refresh::Snapshot::clone(&fixture::snapshot());
        for d in &mut other.devices {
            d.found.netns = Some(odd.into());
            d.names.insert(fixture::key(4), String::new());
        }
        let all = crate::metrics::Compat {
            on: true,
            separate_allowed_ips: true,
            remote_ip_port: true,
            handshake_delay: true,
        };
        let options = [
            ExportOptions::default(),
            ExportOptions { peer_name_label: true, ..Default::default() },
            ExportOptions { redact_endpoints: true, redact_allowed_ips: true, max_series: 40, ..Default::default() },
            ExportOptions { compat: crate::metrics::Compat { on: true, ..Default::default() }, ..Default::default() },
            ExportOptions { compat: all, peer_name_label: true, ..Default::default() },
        ];
        let mut compared = 0;
        for snap in [fixture::snapshot(), std::sync::Arc::new(other)] {
            for opts in &options {
                for exposition in [Exposition::Text, Exposition::OpenMetrics] {
                    let format = Format { exposition, encoding: Encoding::Identity };
                    let page = |lines| {
                        let body = encode::encode_with(Page::new(snap.clone(), opts, fixture::conns()), format, lines);
                        let text = String::from_utf8(body.unwrap().to_vec()).unwrap();
                        // The reading's age moves on between the two.
                        text.lines()
                            .filter(|l| !l.starts_with("wireguard_collector_reading_age_seconds "))
                            .collect::<Vec<_>>()
                            .join("\n")
                    };
                    let (written, theirs) = (page(true), page(false));
                    assert!(written == theirs, "{exposition:?}, {opts:?}:\n{written}\n---\n{theirs}");
                    compared += theirs.lines().count();
                }
            }
        }
        assert!(compared > 4_000, "{compared} lines compared");
    }
}
