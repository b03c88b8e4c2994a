//! A UAPI socket that misbehaves to a plan, for the fault tests. A fake, saying so: real
//! daemons do such things only when broken (lab_wireguard_faults.rs also hangs a real
//! boringtun). Run it inside a namespace where the interface it serves exists:
//!
//!     fake-uapi SOCKET PLAN
//!
//! PLAN is STEP:COUNT,... with STEP one of good (a device with one peer), half (half of that
//! answer, then close), garbage (a line that is no key=value), slow (the good answer a byte
//! every 20 ms: ~6 s), hang (no answer, closed after 5 s). Each `get=1` takes the next step;
//! after the plan, every answer is good, and "plan done" is printed. Connections that ask
//! nothing (the collector's discovery only connects) take no step.

use std::{
    io::{Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

const GOOD: &str = "private_key=a8dc0d4ee8c1b4a1c9bd8e3f0d2c6b7a1e5f4d3c2b1a09f8e7d6c5b4a3928170\n\
listen_port=51820\n\
public_key=de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f\n\
rx_bytes=1000\ntx_bytes=2000\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n\
persistent_keepalive_interval=0\nallowed_ip=10.97.0.2/32\nerrno=0\n\n";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, plan] = &args[..] else {
        eprintln!("usage: fake-uapi SOCKET PLAN");
        std::process::exit(2);
    };
    let steps: Arc<Vec<String>> = Arc::new(
        plan.split(',')
            .flat_map(|s| {
                let (step, n) = s.split_once(':').expect("STEP:COUNT");
                std::iter::repeat_n(step.to_string(), n.parse().expect("a count"))
            })
            .collect(),
    );
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).expect("binding the socket");
    let next = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming().flatten() {
        let (steps, next) = (steps.clone(), next.clone());
        std::thread::spawn(move || serve(stream, &steps, &next));
    }
}

fn serve(mut s: UnixStream, steps: &[String], next: &AtomicUsize) {
    let mut req = Vec::new();
    let mut byte = [0u8; 1];
    while !req.ends_with(b"\n\n") {
        match s.read(&mut byte) {
            Ok(1) => req.push(byte[0]),
            _ => return, // asked nothing
        }
    }
    let i = next.fetch_add(1, Ordering::SeqCst);
    let step = steps.get(i).map_or("good", String::as_str);
    if i + 1 == steps.len() {
        println!("plan done");
    }
    let _ = match step {
        "good" => s.write_all(GOOD.as_bytes()),
        "half" => s.write_all(&GOOD.as_bytes()[..GOOD.len() / 2]),
        "garbage" => s.write_all(b"listen_port=51820\nthis is no answer\nerrno=0\n\n"),
        "slow" => GOOD.as_bytes().iter().try_for_each(|b| {
            std::thread::sleep(Duration::from_millis(20));
            s.write_all(&[*b])
        }),
        "hang" => {
            std::thread::sleep(Duration::from_secs(5));
            Ok(())
        }
        other => panic!("unknown step {other}"),
    };
}
