//! Latency buckets that are Prometheus native-histogram buckets: the kernel bins every
//! sample at schema 4 with integer compares only, and what the collector serves (native
//! buckets at `--latency.schema`, classic `le` buckets, quantiles) is read from those bins.

/// The native-histogram schema the programs bin at: 2^4 = 16 buckets per doubling, each
/// ≤ 4.4 % wide. A sample's bucket is the one Prometheus itself would give it, so the
/// histogram Prometheus stores is the kernel's, bucket for bucket; a coarser schema (what
/// `--latency.schema` serves, 3 by default) merges neighbours exactly (schemas nest).
pub const SCHEMA: u32 = 4;
/// Buckets per doubling at [`SCHEMA`].
pub const PER_DOUBLING: u32 = 1 << SCHEMA;

/// The zero bucket: samples of 0 ns (both clock reads in one tick). Its width, the native
/// histogram's zero threshold, is [`ZERO_THRESHOLD_SECONDS`]: every real bucket lies above it.
pub const ZERO_BUCKET: u16 = 0;
/// 2^-30 s (0.93 ns), a boundary of every schema: below the 1 ns bucket.
pub const ZERO_THRESHOLD_SECONDS: f64 = 1.0 / (1u64 << 30) as f64;

/// A bucket number is the native index at [`SCHEMA`] plus this (1 ns is index -478,
/// u64::MAX ns index 546), so it fits the u16 of [`crate::latency::HistKey`] and 0 stays the
/// zero bucket.
pub const INDEX_OFFSET: i32 = 512;

/// The upper bounds of the 16 buckets of the doubling (0.5, 1] s, as Prometheus has them (the
/// f64 table its `getBound` reads; some are an ulp or two below the nearest f64 of 2^(j/16)/2,
/// and a sample is binned against these, so the server and the kernel agree exactly). Bucket
/// `i` (index at schema 4) has the upper bound `BOUNDS[i mod 16] · 2^(i div 16 + 1)` s.
pub const BOUNDS: [f64; 16] = [
    0.5,
    0.5221368912137069,
    0.5452538663326288,
    0.5693943173783458,
    0.5946035575013605,
    0.620928906036742,
    0.6484197773255048,
    0.6771277734684463,
    0.7071067811865475,
    0.7384130729697496,
    0.7711054127039704,
    0.805245165974627,
    0.8408964152537144,
    0.8781260801866495,
    0.9170040432046711,
    0.9576032806985735,
];

/// An f64 in [0.5, 1) as an integer mantissa f with value f·2^-53.
const fn mantissa(x: f64) -> u128 {
    ((x.to_bits() & ((1 << 52) - 1)) | (1 << 52)) as u128
}

/// 2^29 ns (0.537 s): the doubling of nanoseconds [2^29, 2^30) holds 16 upper bounds, those
/// of BOUNDS·1 s at or above it and those of BOUNDS·2 s below 2^30.
const OCTAVE: u32 = 29;

/// Bounds of BOUNDS·1 s that lie below 2^29 ns (the rest of that doubling of seconds lies
/// in the doubling of nanoseconds above).
const BELOW_OCTAVE: u32 = {
    let mut n = 0;
    let mut j = 0;
    while j < 16 {
        // BOUNDS[j]·1e9 < 2^29 ⟺ f·1e9 < 2^(29+53)
        if mantissa(BOUNDS[j]) * 1_000_000_000 < 1 << (OCTAVE + 53) {
            n += 1;
        }
        j += 1;
    }
    n
};

/// The 16 upper bounds inside a doubling of nanoseconds [2^e, 2^(e+1)), scaled by 2^(63-e)
/// into [2^63, 2^64), rounded down and ascending: a sample `v` with its leading one at bit
/// `e` lies above a bound exactly when `v << (63 - e)` is above its threshold (an integer
/// compared with the floor of a real: exact). Computed in u128 from the f64 bounds, so no
/// rounding enters. The bounds below 2^29 ns come doubled, after the others.
pub const THRESHOLDS: [u64; 16] = {
    let mut t = [0u64; 16];
    let mut j = 0;
    while j < 16 {
        // bound·1e9 ns = f·1e9·2^-53; scaled by 2^(63-29): f·1e9 >> 19, or its double.
        let scaled = mantissa(BOUNDS[j]) * 1_000_000_000;
        let shift = 53 - (63 - OCTAVE);
        let below = (j as u32) < BELOW_OCTAVE;
        let at = if below { j + 16 - BELOW_OCTAVE as usize } else { j - BELOW_OCTAVE as usize };
        t[at] = if below { (scaled >> (shift - 1)) as u64 } else { (scaled >> shift) as u64 };
        j += 1;
    }
    t
};

/// The index at schema 4 of the first bound at or above 2^e ns is 16·e + FIRST.
const FIRST: i32 = BELOW_OCTAVE as i32 - 16 * (OCTAVE as i32 + 1);

/// The bucket of a sample of `ns` nanoseconds: [`ZERO_BUCKET`] for 0, else the native
/// bucket (index i: (2^((i-1)/16), 2^(i/16)] seconds, upper bound included) plus
/// [`INDEX_OFFSET`]. The doubling from the leading-zero count; the place inside it, the
/// number of thresholds below, by a binary search of five compares that unrolls into a tree
/// of immediates: no floating point, no table, no loop.
#[inline(always)]
pub const fn bucket_of(ns: u64) -> u16 {
    if ns == 0 {
        return ZERO_BUCKET;
    }
    let lz = ns.leading_zeros();
    let m = ns << lz;
    let t = &THRESHOLDS;
    let mut below = 0;
    if m > t[7] {
        below += 8;
    }
    if m > t[below + 3] {
        below += 4;
    }
    if m > t[below + 1] {
        below += 2;
    }
    if m > t[below] {
        below += 1;
    }
    if m > t[below] {
        below += 1;
    }
    (PER_DOUBLING as i32 * (63 - lz as i32) + FIRST + below as i32 + INDEX_OFFSET) as u16
}

/// The native index at [`SCHEMA`] of a bucket number; None for the zero bucket.
pub const fn native_index(bucket: u16) -> Option<i32> {
    if bucket == ZERO_BUCKET {
        return None;
    }
    Some(bucket as i32 - INDEX_OFFSET)
}

/// The index at the coarser `schema` (0..=4) of the bucket with index `i` at schema 4:
/// bucket i of a schema is buckets 2i-1 and 2i of the next finer one.
pub const fn coarsen(i: i32, schema: u32) -> i32 {
    let d = SCHEMA - schema;
    (i + (1 << d) - 1) >> d
}

/// The upper bound in seconds of bucket `i` at `schema` (0..=4), as Prometheus computes it.
pub fn upper_bound(i: i32, schema: u32) -> f64 {
    let d = SCHEMA - schema;
    let frac = BOUNDS[((i & ((1 << schema) - 1)) << d) as usize];
    // 2^x built from its exponent bits (no powi without std); x stays far inside ±1022.
    let x = (i >> schema) + 1;
    frac * f64::from_bits(((x + 1023) as u64) << 52)
}

/// The lower bound (excluded) in seconds of bucket `i` at `schema`.
pub fn lower_bound(i: i32, schema: u32) -> f64 {
    upper_bound(i - 1, schema)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// The definition, exactly: the smallest index at `schema` whose upper bound
    /// (Prometheus' f64, times 1e9 in exact integer arithmetic) is at or above `ns`; None
    /// for 0 ns.
    fn index_at(ns: u64, schema: u32) -> Option<i32> {
        if ns == 0 {
            return None;
        }
        let n = 1 << schema;
        // ns ≤ f·1e9·2^(x-53) (x = i div n + 1) ⟺ ns ≤ ⌊f·1e9 / 2^(53-x)⌋, ns being an
        // integer; f·1e9 ≥ 2^81, so every bound with x ≥ 53 is above any u64.
        let at_or_below = |i: i32| -> bool {
            let f = mantissa(BOUNDS[(i.rem_euclid(n) << (SCHEMA - schema)) as usize]) * 1_000_000_000;
            let s = 53 - (i.div_euclid(n) + 1);
            s <= 0 || (ns as u128) <= f >> s
        };
        let mut i = -30 * n;
        while !at_or_below(i) {
            i += 1;
        }
        Some(i)
    }

    fn reference(ns: u64) -> u16 {
        index_at(ns, SCHEMA).map_or(ZERO_BUCKET, |i| (i + INDEX_OFFSET) as u16)
    }

    /// Every upper bound from 1 ns to u64::MAX ns, as the integer ns at or just below it
    /// (exact: ⌊f·1e9 / 2^(53-x)⌋).
    fn bounds_ns() -> Vec<(i32, u64)> {
        let mut out = Vec::new();
        for i in -478i32..=545 {
            let f = mantissa(BOUNDS[i.rem_euclid(16) as usize]) * 1_000_000_000;
            let ns = f >> (53 - (i.div_euclid(16) + 1));
            out.push((i, u64::try_from(ns).unwrap()));
        }
        out
    }

    #[test]
    fn the_bounds_are_prometheus_schema_4() {
        for (j, b) in BOUNDS.iter().enumerate() {
            let exact = 2f64.powf(j as f64 / 16.0) / 2.0;
            assert!((b - exact).abs() <= 2.0 * f64::EPSILON, "bound {j}: {b} vs {exact}");
        }
        assert_eq!(upper_bound(0, 4), 1.0);
        assert_eq!(upper_bound(-16, 4), 0.5);
        assert_eq!(upper_bound(8, 4), 2.0 * 0.7071067811865475);
        assert_eq!(upper_bound(3, 0), 8.0);
        assert_eq!(upper_bound(-30, 0), ZERO_THRESHOLD_SECONDS);
        assert_eq!(upper_bound(-480, 4), ZERO_THRESHOLD_SECONDS);
    }

    #[test]
    fn thresholds_ascend_inside_one_doubling() {
        assert!(THRESHOLDS[0] >= 1 << 63);
        for w in THRESHOLDS.windows(2) {
            assert!(w[0] < w[1], "{THRESHOLDS:x?}");
        }
    }

    #[test]
    fn boundary_values_and_one_ns_around_them() {
        for (i, ns) in bounds_ns() {
            for v in [ns.saturating_sub(1), ns, ns + 1] {
                assert_eq!(bucket_of(v), reference(v), "{v} ns (bound {i})");
            }
            // Where buckets are wider than a nanosecond, the integer at or below an upper bound
            // is in its bucket.
            if ns >= 64 {
                assert_eq!(native_index(bucket_of(ns)), Some(i), "{ns} ns");
            }
        }
        // Bounds that are whole nanoseconds (2^k s, k ≥ -9) include themselves.
        assert_eq!(native_index(bucket_of(1_000_000_000)), Some(0));
        assert_eq!(native_index(bucket_of(1_000_000_001)), Some(1));
        assert_eq!(native_index(bucket_of(2_000_000_000)), Some(16));
        assert_eq!(native_index(bucket_of(1_953_125)), Some(-144));
    }

    #[test]
    fn extremes() {
        assert_eq!(bucket_of(0), ZERO_BUCKET);
        assert_eq!(native_index(bucket_of(0)), None);
        assert_eq!(native_index(bucket_of(1)), Some(-478));
        assert_eq!(bucket_of(1), reference(1));
        assert_eq!(native_index(bucket_of(u64::MAX)), Some(546));
        assert_eq!(bucket_of(u64::MAX), reference(u64::MAX));
        assert!(upper_bound(-479, 4) > ZERO_THRESHOLD_SECONDS);
    }

    #[test]
    fn random_values_agree_with_the_definition() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = x >> (x % 64);
            assert_eq!(bucket_of(v), reference(v), "{v} ns");
        }
    }

    #[test]
    fn coarser_schemas_merge_neighbours_exactly() {
        for (_, ns) in bounds_ns() {
            for v in [ns, ns + 1] {
                let i = native_index(bucket_of(v)).unwrap();
                for schema in 0..=SCHEMA {
                    assert_eq!(Some(coarsen(i, schema)), index_at(v, schema), "{v} ns at schema {schema}");
                }
            }
        }
        assert_eq!(coarsen(0, 3), 0);
        assert_eq!(coarsen(-1, 3), 0);
        assert_eq!(coarsen(-2, 3), -1);
        assert_eq!(coarsen(1, 3), 1);
        assert_eq!(coarsen(2, 3), 1);
        assert_eq!(coarsen(17, 0), 2);
    }
}
