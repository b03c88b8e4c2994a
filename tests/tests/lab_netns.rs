//! WireGuard in other network namespaces (`--netns`): devices there are attached to, read and
//! counted exactly, labelled with their namespace (a containerised one too, whose UAPI socket
//! is only under its own root); namespaces that come and go (also deleted and made again
//! under the same name between two refreshes) leave no fd, no namespace held and no pin
//! behind.
//!
//! The collector runs in an empty namespace of its own, so every device it shows is one it
//! found through --netns. WG_NETNS_SOAK_SECS sets how long the second test cycles (20 s by
//! default; the closing note of issue 18 quotes a 600 s run).

use std::{os::unix::fs::MetadataExt, time::Duration};

use wg_tests::{lab::exclusive, lab::settled, Collector, EmptyNamespace, Implementation, Lab, Metrics, SoloDevice};

const TX: &str = "wireguard_peer_transmit_packets_total";
const RX: &str = "wireguard_peer_receive_packets_total";

#[test]
fn devices_in_two_other_namespaces_are_counted_exactly() {
    let _one_at_a_time = exclusive();
    let go = Lab::new(Implementation::WireguardGo).unwrap();
    let bt = Lab::new(Implementation::Boringtun).unwrap();
    // wireguard-go as in a container: its UAPI socket only under its own root.
    let boxed = SoloDevice::contained(&SoloDevice::fresh_name()).unwrap();
    let home = EmptyNamespace::new().unwrap();
    // Two by their name under /run/netns, one by its path.
    let bt_path = format!("/run/netns/{}", bt.a.ns);
    let c = Collector::start(&home.name, &["--netns", &go.a.ns, "--netns", &bt_path, "--netns", &boxed.ns]).unwrap();

    let (m, _) = c
        .wait_for(Duration::from_secs(10), |m| {
            [(&go.a, "wireguard-go"), (&bt.a, "boringtun")]
                .iter()
                .map(|(side, imp)| (side.iface.as_str(), side.ns.as_str(), *imp))
                .chain([(boxed.iface.as_str(), boxed.ns.as_str(), "wireguard-go")])
                .all(|(device, ns, imp)| {
                    let want = [("device", device), ("netns", ns), ("implementation", imp)];
                    m.get("wireguard_device_info", &want) == Some(1.0)
                })
        })
        .unwrap();
    // Only the three namespaces asked for: neither the b sides nor anything of its own.
    assert_eq!(m.find("wireguard_device_info", &[]).count(), 3, "{}", m.text);
    for lab in [&go, &bt] {
        assert!(!m.mentions("netns", &lab.b.ns));
        assert_eq!(m.get("wireguard_device_up", &[("device", &lab.a.iface), ("netns", &lab.a.ns)]), Some(1.0));
        // WireGuard's own state, read inside the namespace (UAPI socket of that daemon).
        assert!(m.get("wireguard_peer_receive_bytes_total", &peer(lab)).is_some_and(|b| b > 0.0), "{}", m.text);
    }

    let counts = |m: &Metrics| -> Vec<f64> {
        [&go, &bt].iter().flat_map(|lab| [m.get_or_zero(TX, &peer(lab)), m.get_or_zero(RX, &peer(lab))]).collect()
    };
    let before = settled(|| counts(&c.scrape().unwrap())).unwrap();
    go.exec('a', "ping", &["-c", "10", "-i", "0.01", "-q", "10.99.0.2"]).unwrap();
    bt.exec('a', "ping", &["-c", "7", "-i", "0.01", "-q", "10.99.0.2"]).unwrap();
    let after = settled(|| counts(&c.scrape().unwrap())).unwrap();
    let delta: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    // Each echo request leaves side a through its device, each reply comes back in.
    assert_eq!(delta, [10.0, 10.0, 7.0, 7.0], "tx/rx of wireguard-go's peer, then boringtun's");

    // The contained one: found through its socket under /proc/PID/root, read and counted.
    let tx = [("device", boxed.iface.as_str()), ("netns", boxed.ns.as_str()), ("public_key", boxed.peer_key.as_str())];
    assert_eq!(c.scrape().unwrap().get(TX, &tx), Some(0.0));
    boxed.ping(5);
    assert_eq!(settled(|| c.scrape().unwrap().get(TX, &tx)).unwrap(), Some(5.0));
    let m = c.scrape().unwrap();
    assert_eq!(m.get("wireguard_peers", &[("device", boxed.iface.as_str()), ("netns", boxed.ns.as_str())]), Some(1.0));
}

fn peer(lab: &Lab) -> [(&str, &str); 3] {
    [("device", &lab.a.iface), ("netns", &lab.a.ns), ("public_key", &lab.b.public_key)]
}

#[test]
fn namespaces_come_and_go_without_leaks() {
    let _one_at_a_time = exclusive();
    let soak = Duration::from_secs(std::env::var("WG_NETNS_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20));
    let home = EmptyNamespace::new().unwrap();
    let c = Collector::start(&home.name, &["--netns", "all"]).unwrap();
    let pins = c.pin_path().unwrap().to_path_buf();
    let name = SoloDevice::fresh_name();
    let started = std::time::Instant::now();
    let (mut cycles, mut remade_at_once, mut baseline) = (0u32, 0u32, None);
    let mut solo = Some(SoloDevice::new(&name).unwrap());
    loop {
        let s = solo.take().unwrap();
        let tx = [("device", s.iface.as_str()), ("netns", s.ns.as_str()), ("public_key", s.peer_key.as_str())];
        // Found (with --netns all, by appearing), counting from zero: a namespace made again
        // is a new one, its device too.
        let (m, _) = c.wait_for(Duration::from_secs(10), |m| m.get(TX, &tx).is_some()).unwrap();
        assert_eq!(m.get(TX, &tx), Some(0.0), "cycle {cycles}");
        s.ping(5);
        let n = settled(|| c.scrape().unwrap().get(TX, &tx)).unwrap();
        assert_eq!(n, Some(5.0), "cycle {cycles}");

        let inode = std::fs::metadata(format!("/run/netns/{}", s.ns)).unwrap().ino();
        let key = format!("{}@{}", s.iface, s.ns);
        assert!(pins.join(&key).is_dir(), "pinned under {}", pins.display());
        drop(s);
        // Every other cycle the namespace is made again at once, before the collector could
        // see it gone: it must tell the new one from the old by its inode.
        if cycles % 2 == 1 {
            solo = Some(SoloDevice::new(&name).unwrap());
            remade_at_once += 1;
        } else {
            c.wait_for(Duration::from_secs(10), |m| !m.mentions("netns", &name)).unwrap();
            // Let go of: the namespace (no fd of the collector is it), its pins; fds back
            // to where they were after the first cycle.
            let fds = c.quiet_fds();
            assert!(!fds.1.contains(&format!("net:[{inode}]")), "the deleted namespace is still held: {:?}", fds.1);
            assert!(!pins.join(&key).exists(), "{key} still pinned");
            match baseline {
                None => baseline = Some(fds.0),
                Some(b) => assert_eq!(fds.0, b, "open fds after cycle {cycles}: {:?}", fds.1),
            }
        }
        cycles += 1;
        if started.elapsed() > soak && solo.is_none() {
            break;
        }
        if solo.is_none() {
            solo = Some(SoloDevice::new(&name).unwrap());
        }
    }
    println!(
        "{cycles} namespaces made and deleted in {:.0?} ({remade_at_once} made again at once), fds steady at {}",
        started.elapsed(),
        baseline.unwrap()
    );
    assert!(cycles >= 4);
}
