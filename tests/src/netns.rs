//! Running commands and closures inside a named network namespace (/run/netns/NAME).

use std::{fs::File, os::fd::AsRawFd, process::Command};

use anyhow::{bail, Context, Result};

/// A command to run inside namespace `ns` (through `ip netns exec`, which also gives it
/// that namespace's /sys).
pub fn cmd(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// Runs a command to completion and returns its stdout; fails with its stderr.
pub fn run(c: &mut Command) -> Result<String> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!("{c:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `args` as a command line (first word the program).
pub fn sh(args: &[&str]) -> Result<String> {
    run(Command::new(args[0]).args(&args[1..]))
}

/// Moves the calling thread into network namespace `ns` (for good: call it on a thread of
/// its own).
pub fn enter(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on this thread only, with a valid namespace fd.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs `f` on a thread that has entered network namespace `ns`: sockets it opens live
/// there. The calling thread is not moved.
pub fn within<T: Send + 'static>(ns: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let ns_name = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns_name)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}

/// Forwards TCP connections accepted on `listen` (in this process's namespace) to `target`
/// inside namespace `ns`, until the process ends. Lets a browser on the host reach a
/// collector that serves inside a lab namespace.
pub fn forward(listen: std::net::SocketAddr, ns: &str, target: std::net::SocketAddr) -> Result<std::net::SocketAddr> {
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let local = listener.local_addr()?;
    let ns = ns.to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let ns = ns.clone();
            std::thread::spawn(move || -> Result<()> {
                let upstream = within(&ns, move || Ok(TcpStream::connect(target)?))?;
                let (mut c_r, mut c_w) = (client.try_clone()?, client);
                let (mut u_r, mut u_w) = (upstream.try_clone()?, upstream);
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_r, &mut u_w);
                    let _ = u_w.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut u_r, &mut c_w);
                let _ = c_w.shutdown(std::net::Shutdown::Write);
                let _ = up.join();
                Ok(())
            });
        }
    });
    Ok(local)
}

/// Sends `frames` as raw L3 packets out of interface `iface` in namespace `ns` (an
/// AF_PACKET datagram socket): whatever bytes they are, they reach the interface's egress,
/// which is how tests put malformed packets in front of our programs.
pub fn send_raw(ns: &str, iface: &str, frames: Vec<Vec<u8>>) -> Result<()> {
    let iface = iface.to_string();
    within(ns, move || {
        let c = std::ffi::CString::new(iface.clone())?;
        // SAFETY: plain socket calls with valid arguments; the fd is closed below.
        unsafe {
            let ifindex = libc::if_nametoindex(c.as_ptr());
            if ifindex == 0 {
                bail!("no interface {iface}");
            }
            let proto = (libc::ETH_P_IP as u16).to_be();
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto as i32);
            if fd < 0 {
                bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
            }
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = proto;
            addr.sll_ifindex = ifindex as i32;
            let mut result = Ok(());
            for f in &frames {
                let n = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                if n < 0 {
                    result = Err(anyhow::anyhow!("sendto {iface}: {}", std::io::Error::last_os_error()));
                    break;
                }
            }
            libc::close(fd);
            result
        }
    })
}
