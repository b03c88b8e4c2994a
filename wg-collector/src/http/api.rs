//! `/api/v1/state`: what the live page draws, as JSON. The same snapshot a scrape reads,
//! with the same redaction and names.

use serde_json::{json, Value};
use wg_common::latency::Kind;

use crate::{histogram::Series, metrics::ExportOptions, refresh::Snapshot};

pub fn state(snap: &Snapshot, opts: &ExportOptions) -> Value {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let (buckets, schema) = (&opts.buckets, opts.schema);
    // p50/p99 as Prometheus reads them from the native histogram the protobuf page serves.
    let hist = |s: &Series| {
        json!({
            "count": s.count,
            "sum": s.sum_seconds(),
            "p50": s.quantile(0.5, schema),
            "p99": s.quantile(0.99, schema),
            "buckets": s.exposition(buckets),
        })
    };
    let devices: Vec<Value> = snap
        .devices
        .iter()
        .map(|d| {
            let mut device_rtt = Series::default();
            let peers: Vec<Value> = d
                .state
                .peers
                .iter()
                .map(|p| {
                    let mut rtt = Series::default();
                    for (k, h, v) in d.reading.iter().flat_map(|r| &r.latency) {
                        if *k == Some(p.public_key) && Kind::RTT.iter().any(|r| *r as u16 == h.kind) {
                            rtt.add(h.bucket, v.count, v.sum_ns);
                        }
                    }
                    device_rtt.merge(&rtt);
                    let c = d.reading.as_ref().and_then(|r| r.counters.get(&p.public_key)).copied().unwrap_or_default();
                    json!({
                        "public_key": p.public_key.to_base64(),
                        "name": d.names.get(&p.public_key),
                        "endpoint": if opts.redact_endpoints { None } else { p.endpoint.map(|e| e.to_string()) },
                        "last_handshake": p.last_handshake.map(|t| t.as_secs_f64()),
                        "rx_bytes": p.rx_bytes,
                        "tx_bytes": p.tx_bytes,
                        "rx_packets": c.dir[wg_common::DIR_RX].packets,
                        "tx_packets": c.dir[wg_common::DIR_TX].packets,
                        "latency": hist(&rtt),
                    })
                })
                .collect();
            json!({
                "name": d.found.name,
                "netns": d.found.netns,
                "implementation": d.found.implementation.to_string(),
                "listen_port": d.state.listen_port,
                "peers": peers,
                "latency": hist(&device_rtt),
            })
        })
        .collect();
    json!({ "time": now, "devices": devices })
}
