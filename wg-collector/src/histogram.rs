//! Latency histograms from the kernel's buckets (Prometheus native buckets at schema 4, see
//! wg_common::buckets) to what a scrape shows: native buckets at the served schema, classic
//! `le` buckets folded from them, and quantiles.

use std::collections::BTreeMap;

use wg_common::buckets::{bucket_of, coarsen, lower_bound, native_index, upper_bound, SCHEMA, ZERO_THRESHOLD_SECONDS};

/// The `le` boundaries a histogram is exposed with.
#[derive(Clone, Debug, PartialEq)]
pub enum Buckets {
    /// These boundaries, in seconds, ascending.
    Classic(Vec<f64>),
    /// Every kernel bucket bound from 1 µs to 10 s (~370 boundaries: full resolution).
    Full,
}

/// ~16 boundaries from 50 µs to 10 s: a LAN hop to a satellite link.
pub const DEFAULT_BUCKETS: [f64; 17] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Default for Buckets {
    fn default() -> Self {
        Self::Classic(DEFAULT_BUCKETS.to_vec())
    }
}

/// As the flag takes them: "full", or the boundaries with commas.
impl std::fmt::Display for Buckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Full => f.write_str("full"),
            Self::Classic(v) => {
                let parts: Vec<String> = v.iter().map(|s| s.to_string()).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

impl std::str::FromStr for Buckets {
    type Err = String;

    /// "full", or seconds separated by commas ("0.001,0.01,0.1").
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "full" {
            return Ok(Self::Full);
        }
        let mut v = Vec::new();
        for part in s.split(',') {
            let x: f64 = part.trim().parse().map_err(|_| format!("{part:?} is not a number of seconds"))?;
            if !(x.is_finite() && x > 0.0) {
                return Err(format!("{part:?}: boundaries must be positive seconds"));
            }
            if v.last().is_some_and(|l| *l >= x) {
                return Err(format!("{part:?}: boundaries must ascend"));
            }
            v.push(x);
        }
        Ok(Self::Classic(v))
    }
}

impl Buckets {
    /// Upper boundaries in seconds.
    fn bounds(&self) -> Vec<f64> {
        match self {
            Self::Classic(v) => v.clone(),
            Self::Full => (bucket_of(1_000)..=bucket_of(10_000_000_000)).map(upper).collect(),
        }
    }
}

/// The served native schema: 0 (a bucket per doubling) to 4 (16, what the kernel bins at).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schema(u32);

/// 8 buckets per doubling, each ≤ 9 % wide: a quantile good to ~4 %, half the buckets of
/// schema 4 to store.
pub const DEFAULT_SCHEMA: Schema = Schema(3);

impl Default for Schema {
    fn default() -> Self {
        DEFAULT_SCHEMA
    }
}

impl Schema {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for Schema {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().parse::<u32>() {
            Ok(v) if v <= SCHEMA => Ok(Self(v)),
            _ => Err(format!(
                "{s:?}: the schema is 0 to {SCHEMA} (2^schema buckets per doubling; the kernel bins at {SCHEMA})"
            )),
        }
    }
}

/// A kernel bucket's upper bound in seconds (the zero bucket's: the zero threshold).
fn upper(bucket: u16) -> f64 {
    native_index(bucket).map_or(ZERO_THRESHOLD_SECONDS, |i| upper_bound(i, SCHEMA))
}

/// A native histogram's buckets as the protobuf carries them: the zero bucket's count, the
/// populated buckets as spans (offset from the end of the span before, or the first index;
/// length) and their counts as deltas (each from the bucket before).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Native {
    pub schema: i32,
    pub zero_threshold: f64,
    pub zero_count: u64,
    pub spans: Vec<(i32, u32)>,
    pub deltas: Vec<i64>,
}

/// One histogram series: the kernel's buckets with samples, the count and the exact sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    pub count: u64,
    pub sum_ns: u64,
    /// Kernel bucket → samples.
    pub buckets: BTreeMap<u16, u64>,
}

impl Series {
    pub fn add(&mut self, bucket: u16, count: u64, sum_ns: u64) {
        self.count += count;
        self.sum_ns += sum_ns;
        *self.buckets.entry(bucket).or_default() += count;
    }

    pub fn merge(&mut self, other: &Series) {
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        for (b, c) in &other.buckets {
            *self.buckets.entry(*b).or_default() += c;
        }
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }

    /// (le in seconds, samples in that bucket alone), as prometheus-client encodes them; a
    /// final +Inf bucket holds what lies above the last boundary. A kernel bucket counts
    /// under the first boundary at or above its upper bound, so `le` never counts a sample
    /// that could be larger than it. Where `le` is a kernel bound (every bound of `full`,
    /// and 2^k s) this is exact; elsewhere the kernel bucket that straddles `le` counts
    /// above it: `le` may miss samples up to one kernel bucket (≤ 4.4 %) below it.
    pub fn exposition(&self, buckets: &Buckets) -> Vec<(f64, u64)> {
        let bounds = buckets.bounds();
        let mut out: Vec<(f64, u64)> = bounds.iter().map(|b| (*b, 0)).collect();
        out.push((f64::INFINITY, 0));
        for (b, c) in &self.buckets {
            let upper = upper(*b);
            let i = bounds.partition_point(|le| *le < upper);
            out[i].1 += c;
        }
        out
    }

    /// The zero bucket's count and the populated buckets at `schema`, ascending: the kernel's
    /// buckets merged in runs of 2^(4-schema) (schemas nest, so this is what binning at
    /// `schema` would have given).
    fn at_schema(&self, schema: Schema) -> (u64, Vec<(i32, u64)>) {
        let (mut zero, mut merged) = (0, Vec::<(i32, u64)>::new());
        for (b, c) in &self.buckets {
            match native_index(*b) {
                None => zero += c,
                Some(i) => {
                    let i = coarsen(i, schema.0);
                    match merged.last_mut() {
                        Some((last, count)) if *last == i => *count += c,
                        _ => merged.push((i, *c)),
                    }
                }
            }
        }
        (zero, merged)
    }

    /// The native histogram at `schema`.
    pub fn native(&self, schema: Schema) -> Native {
        let (zero_count, merged) = self.at_schema(schema);
        let mut n =
            Native { schema: schema.0 as i32, zero_threshold: ZERO_THRESHOLD_SECONDS, zero_count, ..Native::default() };
        let (mut end, mut before) = (None::<i32>, 0i64);
        for (i, c) in merged {
            match (end, n.spans.last_mut()) {
                (Some(e), Some(span)) if e == i => span.1 += 1,
                (Some(e), _) => n.spans.push((i - e, 1)),
                (None, _) => n.spans.push((i, 1)),
            }
            end = Some(i + 1);
            n.deltas.push(c as i64 - before);
            before = c as i64;
        }
        n
    }

    /// The q-quantile in seconds of the native histogram at `schema`, interpolated linearly
    /// inside the bucket it falls in: what Prometheus 2.42's histogram_quantile answers for
    /// it (the zero bucket spans 0 to the zero threshold).
    pub fn quantile(&self, q: f64, schema: Schema) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let (zero, merged) = self.at_schema(schema);
        let buckets = (zero > 0)
            .then_some((0.0, ZERO_THRESHOLD_SECONDS, zero))
            .into_iter()
            .chain(merged.iter().map(|(i, c)| (lower_bound(*i, schema.0), upper_bound(*i, schema.0), *c)));
        let mut seen = 0u64;
        let mut last = None;
        for (lo, hi, c) in buckets {
            if (seen + c) as f64 >= rank {
                let frac = (rank - seen as f64) / c as f64;
                return Some(lo + (hi - lo) * frac);
            }
            seen += c;
            last = Some(hi);
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_flags() {
        assert_eq!("full".parse::<Buckets>(), Ok(Buckets::Full));
        assert_eq!("0.001, 0.01".parse::<Buckets>(), Ok(Buckets::Classic(vec![0.001, 0.01])));
        assert!("0.01,0.001".parse::<Buckets>().unwrap_err().contains("ascend"));
        assert!("x".parse::<Buckets>().unwrap_err().contains(r#""x""#));
        assert!("0".parse::<Buckets>().unwrap_err().contains("positive"));
    }

    #[test]
    fn the_default_reads_back_as_itself() {
        assert_eq!(
            Buckets::default().to_string(),
            "0.00005,0.0001,0.00025,0.0005,0.001,0.0025,0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5,10"
        );
        assert_eq!(Buckets::default().to_string().parse::<Buckets>(), Ok(Buckets::default()));
        assert_eq!(Buckets::Full.to_string().parse::<Buckets>(), Ok(Buckets::Full));
    }

    #[test]
    fn kernel_buckets_fold_into_classic_ones() {
        let mut s = Series::default();
        // 0.9 ms, 1.0 ms exactly (its kernel bucket reaches above 1 ms), 3 ms, 20 s.
        for ns in [900_000u64, 1_000_000, 3_000_000, 20_000_000_000] {
            s.add(bucket_of(ns), 1, ns);
        }
        let e = s.exposition(&Buckets::Classic(vec![0.001, 0.005]));
        assert_eq!(e, vec![(0.001, 1), (0.005, 2), (f64::INFINITY, 1)]);
        assert_eq!(s.count, 4);
        assert!((s.sum_seconds() - 20.0049).abs() < 1e-9);
    }

    #[test]
    fn quantiles_are_within_a_bucket() {
        let mut s = Series::default();
        for i in 0..1000u64 {
            let ns = 10_000_000 + i * 10_000; // 10.00 .. 19.99 ms, uniform
            s.add(bucket_of(ns), 1, ns);
        }
        // Within the bucket width of the schema: 4.4 % at 4, 9 % at 3.
        let median = s.quantile(0.5, Schema(4)).unwrap();
        assert!((median - 0.015).abs() / 0.015 < 0.044, "{median}");
        let median = s.quantile(0.5, Schema(3)).unwrap();
        assert!((median - 0.015).abs() / 0.015 < 0.09, "{median}");
        assert_eq!(Series::default().quantile(0.5, Schema(3)), None);
        let full = s.exposition(&Buckets::Full);
        assert_eq!(full.iter().map(|(_, c)| c).sum::<u64>(), 1000);
    }

    #[test]
    fn native_buckets_are_the_kernels_in_spans_and_deltas() {
        let mut s = Series::default();
        // 1 s is the upper bound of index 0 at every schema; 1.05 s is index 2 at schema 4
        // (2^(1/16) = 1.044, 2^(2/16) = 1.09) and index 1 at schema 3; 4 s is index 32 / 16.
        for (ns, n) in [(0u64, 2u64), (1_000_000_000, 3), (1_050_000_000, 1), (1_060_000_000, 1), (4_000_000_000, 5)] {
            s.add(bucket_of(ns), n, ns * n);
        }
        let four = s.native(Schema(4));
        assert_eq!((four.schema, four.zero_count, four.zero_threshold), (4, 2, ZERO_THRESHOLD_SECONDS));
        assert_eq!(four.spans, vec![(0, 1), (1, 1), (29, 1)]);
        assert_eq!(four.deltas, vec![3, -1, 3]);
        let three = s.native(Schema(3));
        assert_eq!(three.spans, vec![(0, 2), (14, 1)]);
        assert_eq!(three.deltas, vec![3, -1, 3]);
        let zero = s.native(Schema(0));
        // Index 0 holds (0.5, 1], index 1 (1, 2], index 2 (2, 4].
        assert_eq!(zero.spans, vec![(0, 3)]);
        assert_eq!(zero.deltas, vec![3, -1, 3]);
        assert_eq!(Series::default().native(Schema(3)).spans, vec![]);
    }

    #[test]
    fn parses_schemas() {
        assert_eq!("3".parse::<Schema>(), Ok(Schema(3)));
        assert_eq!("0".parse::<Schema>(), Ok(Schema(0)));
        assert!("5".parse::<Schema>().unwrap_err().contains("0 to 4"));
        assert!("-1".parse::<Schema>().is_err());
    }
}
