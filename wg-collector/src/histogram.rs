//! Latency histograms from the kernel's log-linear buckets (16 per power of two, see
//! wg_common::latency) to Prometheus' classic `le` buckets, at scrape time.

use std::collections::BTreeMap;

use wg_common::latency::{bucket_lower_ns, bucket_of, bucket_upper_ns};

/// The `le` boundaries a histogram is exposed with.
#[derive(Clone, Debug, PartialEq)]
pub enum Buckets {
    /// These boundaries, in seconds, ascending.
    Classic(Vec<f64>),
    /// Every kernel bucket edge from 1 µs to 10 s (~400 boundaries: full resolution).
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
    /// Upper boundaries in nanoseconds.
    fn bounds_ns(&self) -> Vec<u64> {
        match self {
            Self::Classic(v) => v.iter().map(|s| (s * 1e9).round() as u64).collect(),
            Self::Full => (bucket_of(1_000)..=bucket_of(10_000_000_000)).map(bucket_upper_ns).collect(),
        }
    }
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
    /// under the first boundary at or above its upper edge, so `le` never counts a sample
    /// that could be larger than it (a sample may show one kernel bucket, ≤ 6.25 %, high).
    pub fn exposition(&self, buckets: &Buckets) -> Vec<(f64, u64)> {
        let bounds = buckets.bounds_ns();
        let mut out: Vec<(f64, u64)> = bounds.iter().map(|b| (*b as f64 / 1e9, 0)).collect();
        out.push((f64::INFINITY, 0));
        for (b, c) in &self.buckets {
            let upper = bucket_upper_ns(*b);
            let i = bounds.partition_point(|le| *le < upper);
            out[i].1 += c;
        }
        out
    }

    /// The q-quantile in seconds, interpolated linearly inside the kernel bucket it falls in
    /// (what histogram_quantile does with classic buckets, at the kernel's resolution).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut seen = 0u64;
        for (b, c) in &self.buckets {
            if (seen + c) as f64 >= rank {
                let (lo, hi) = (bucket_lower_ns(*b) as f64, bucket_upper_ns(*b) as f64);
                let frac = (rank - seen as f64) / *c as f64;
                return Some((lo + (hi - lo) * frac) / 1e9);
            }
            seen += c;
        }
        self.buckets.keys().last().map(|b| bucket_upper_ns(*b) as f64 / 1e9)
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
    fn quantiles_are_within_a_kernel_bucket() {
        let mut s = Series::default();
        for i in 0..1000u64 {
            let ns = 10_000_000 + i * 10_000; // 10.00 .. 19.99 ms, uniform
            s.add(bucket_of(ns), 1, ns);
        }
        let median = s.quantile(0.5).unwrap();
        assert!((median - 0.015).abs() / 0.015 < 0.0625, "{median}");
        let full = s.exposition(&Buckets::Full);
        assert_eq!(full.iter().map(|(_, c)| c).sum::<u64>(), 1000);
    }
}
