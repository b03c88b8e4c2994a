//! The kernel bins latency samples exactly as userspace does (wg_common::buckets, whose unit
//! tests prove it against the definition): the same function compiled for BPF, run through
//! BPF_PROG_TEST_RUN (needs root) on boundary values and 10^5 random ones.

use wg_common::buckets::{bucket_of, upper_bound, SCHEMA};
use wg_model::harness::Harness;

#[test]
fn the_kernel_and_userspace_bin_every_value_alike() {
    let mut h = Harness::new().unwrap();
    let mut values = vec![0, 1, 2, 3, 999, 1_000, 1_000_000_000, 1_000_000_001, u64::MAX, u64::MAX - 1];
    for i in -478..=545 {
        let ns = (upper_bound(i, SCHEMA) * 1e9) as u64;
        values.extend([ns.saturating_sub(1), ns, ns + 1]);
    }
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..100_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Every magnitude as often as any other.
        values.push(x >> (x % 64));
    }
    let mut differ = Vec::new();
    for v in &values {
        let (kernel, user) = (h.kernel_bucket_of(*v).unwrap(), bucket_of(*v));
        if kernel != user {
            differ.push((*v, kernel, user));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} values binned differently, e.g. {:?}",
        differ.len(),
        values.len(),
        &differ[..differ.len().min(5)]
    );
}
