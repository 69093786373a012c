//! The namespace topology of the end-to-end tests of the data plane:
//!
//! ```text
//!   snd ns                     fwd ns (hepfwd)                       col ns
//!   eth0 198.18.1.1/24  ──  in0 198.18.1.2/24   out0 198.18.2.1/24 ── eth0 198.18.2.2/24
//!        198.18.1.9/24      (XDP attaches here)                           198.18.2.3/24
//! ```
//!
//! Every test builds its own three namespaces (names carry the test's tag, the pid and a
//! sequence number, so parallel tests and test processes never collide), deleted by
//! [`Topology`]'s `Drop` also when the test fails. Interface names are fixed: they live
//! inside the namespaces. Test traffic stays inside them (198.18.0.0/15) and every send is
//! bounded in count and time.
//!
//! Sockets are opened on a thread that entered the namespace ([`Topology::within`]): a socket
//! keeps the namespace it was created in, so the test then uses it from any thread. The
//! daemon runs in `fwd` through `ip netns exec` ([`Topology::hepfwd`]); its admin server
//! listens on 127.0.0.1 inside `fwd` and is scraped from a thread in `fwd`.
//!
//! ```no_run
//! # use hepfwd_tests::netns::*;
//! # use hepfwd_tests::daemon::Mode;
//! let topo = Topology::new("doc");
//! let a = topo.udp_collector("a", COL_A, 9061);
//! topo.warm_neighbours();
//! let d = topo.hepfwd(Mode::Userspace, "...config...");
//! topo.agent(SND).send_all(LISTEN, &[b"HEP3...".to_vec()]);
//! ```

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::collector::{Agent, TcpCollector, UdpCollector};
use crate::daemon::{Daemon, Mode};

/// The sender's address (snd's `eth0`).
pub const SND: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// A second sender address on snd's `eth0` (for allow lists that leave it out).
pub const SND2: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 9);
/// fwd's address toward the sender (`in0`): where hepfwd listens.
pub const FWD_IN: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// fwd's address toward the collectors (`out0`).
pub const FWD_OUT: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// Collector address A (col's `eth0`).
pub const COL_A: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
/// Collector address B (col's `eth0` too).
pub const COL_B: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 3);
/// The HEP listener of the tests: `198.18.1.2:9060` in fwd.
pub const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(FWD_IN), 9060);
/// fwd's interface toward snd (the one XDP attaches to).
pub const IF_IN: &str = "in0";
/// fwd's interface toward col (the XDP redirect target).
pub const IF_OUT: &str = "out0";
/// The interface of snd and of col (each the peer of one of fwd's).
pub const IF_PEER: &str = "eth0";
/// The admin server of a daemon started by [`Topology::hepfwd`], inside fwd.
pub const ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9100);

/// How long [`Topology::warm_neighbours`] waits for ARP.
const NEIGH_TIMEOUT: Duration = Duration::from_secs(5);

/// One of the three namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    /// The HEP agent's side.
    Snd,
    /// The forwarder's (hepfwd's).
    Fwd,
    /// The collectors'.
    Col,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// The three namespaces and their links; all deleted on drop.
pub struct Topology {
    /// `[snd, fwd, col]` namespace names.
    names: [String; 3],
}

impl Topology {
    /// Builds the topology for the test tagged `tag` (keep it short: it is part of the
    /// namespace names). Panics (after deleting what it made) when a step fails.
    pub fn new(tag: &str) -> Topology {
        let base = format!(
            "hepfwd-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let names = ["snd", "fwd", "col"].map(|r| format!("{base}-{r}"));
        for n in &names {
            // A leftover of a crashed run with the same pid would make `add` fail.
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        // The guard exists before the first namespace, so a failing step cleans up.
        let topo = Topology { names };
        for n in &topo.names {
            run("ip", &["netns", "add", n]);
        }
        let (snd, col) = (topo.name(Ns::Snd), topo.name(Ns::Col));
        topo.ip(
            Ns::Fwd,
            &[
                "link", "add", IF_IN, "type", "veth", "peer", "name", IF_PEER, "netns", snd,
            ],
        );
        topo.ip(
            Ns::Fwd,
            &[
                "link", "add", IF_OUT, "type", "veth", "peer", "name", IF_PEER, "netns", col,
            ],
        );
        topo.ip(
            Ns::Snd,
            &["addr", "add", &format!("{SND}/24"), "dev", IF_PEER],
        );
        topo.ip(
            Ns::Snd,
            &["addr", "add", &format!("{SND2}/24"), "dev", IF_PEER],
        );
        topo.ip(
            Ns::Fwd,
            &["addr", "add", &format!("{FWD_IN}/24"), "dev", IF_IN],
        );
        topo.ip(
            Ns::Fwd,
            &["addr", "add", &format!("{FWD_OUT}/24"), "dev", IF_OUT],
        );
        topo.ip(
            Ns::Col,
            &["addr", "add", &format!("{COL_A}/24"), "dev", IF_PEER],
        );
        topo.ip(
            Ns::Col,
            &["addr", "add", &format!("{COL_B}/24"), "dev", IF_PEER],
        );
        for (ns, dev) in [
            (Ns::Snd, "lo"),
            (Ns::Snd, IF_PEER),
            (Ns::Fwd, "lo"),
            (Ns::Fwd, IF_IN),
            (Ns::Fwd, IF_OUT),
            (Ns::Col, "lo"),
            (Ns::Col, IF_PEER),
        ] {
            topo.ip(ns, &["link", "set", dev, "up"]);
        }
        topo.ip(
            Ns::Snd,
            &["route", "add", "default", "via", &FWD_IN.to_string()],
        );
        topo.ip(
            Ns::Col,
            &["route", "add", "default", "via", &FWD_OUT.to_string()],
        );
        // bpf_fib_lookup answers FWD_DISABLED unless the ingress device forwards.
        for key in ["all", "default", IF_IN, IF_OUT] {
            topo.exec(
                Ns::Fwd,
                "sysctl",
                &["-qw", &format!("net.ipv4.conf.{key}.forwarding=1")],
            );
        }
        // A veth drops XDP_REDIRECTed / XDP_TXed frames unless its peer runs XDP or has
        // GRO on (XDP.md, "a minimal steer, verified").
        for ns in [Ns::Snd, Ns::Col] {
            topo.exec(ns, "ethtool", &["-K", IF_PEER, "gro", "on"]);
        }
        topo
    }

    /// The `ip netns` name of `ns`.
    pub fn name(&self, ns: Ns) -> &str {
        &self.names[ns as usize]
    }

    /// Runs `f` on a thread that entered `ns` and returns its result. Sockets it opens stay
    /// in `ns` wherever they are used later.
    pub fn within<R: Send>(&self, ns: Ns, f: impl FnOnce() -> R + Send) -> R {
        in_netns(self.name(ns), f)
    }

    /// `ip -n <ns> ARGS`, asserting success; its stdout.
    pub fn ip(&self, ns: Ns, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name(ns)];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip netns exec <ns> PROGRAM ARGS`, asserting success; its stdout.
    pub fn exec(&self, ns: Ns, program: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", self.name(ns), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A UDP socket bound to `addr` in `ns`.
    pub fn udp_socket(&self, ns: Ns, addr: SocketAddr) -> UdpSocket {
        self.within(ns, || {
            UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind UDP {addr} in {ns:?}: {e}"))
        })
    }

    /// A UDP collector on `ip:port` in col.
    pub fn udp_collector(&self, name: &str, ip: Ipv4Addr, port: u16) -> UdpCollector {
        self.within(Ns::Col, || UdpCollector::bind(name, (ip, port).into()))
    }

    /// A TCP collector on `ip:port` in col.
    pub fn tcp_collector(&self, name: &str, ip: Ipv4Addr, port: u16) -> TcpCollector {
        self.within(Ns::Col, || TcpCollector::bind(name, (ip, port).into()))
    }

    /// A HEP agent in snd sending from `ip` ([`SND`] or [`SND2`]).
    pub fn agent(&self, ip: Ipv4Addr) -> Agent {
        self.within(Ns::Snd, || Agent::bind(&ip.to_string()))
    }

    /// Resolves the neighbours the data plane needs before anything is measured: snd →
    /// fwd (`in0`), and fwd → both collector addresses (the kernel passes a packet whose next
    /// hop has no neighbour entry up to the daemon instead of steering it). One UDP datagram
    /// to the discard port each (the collectors' ports see nothing), then waits until the
    /// entries are valid. Panics after [`NEIGH_TIMEOUT`].
    pub fn warm_neighbours(&self) {
        let discard = |ip: Ipv4Addr| SocketAddr::from((ip, 9));
        let from_snd = self.udp_socket(Ns::Snd, (SND, 0).into());
        let from_fwd = self.udp_socket(Ns::Fwd, (FWD_OUT, 0).into());
        let wanted = [
            (Ns::Snd, FWD_IN, &from_snd),
            (Ns::Fwd, COL_A, &from_fwd),
            (Ns::Fwd, COL_B, &from_fwd),
        ];
        let deadline = Instant::now() + NEIGH_TIMEOUT;
        for (ns, ip, sock) in wanted {
            // One datagram, and one more every 200 ms while unresolved (bounded by the
            // deadline: at most 25 per neighbour).
            let mut last_send: Option<Instant> = None;
            loop {
                if self.neighbour_valid(ns, ip) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "no neighbour entry for {ip} in {ns:?} within {NEIGH_TIMEOUT:?}:\n{}",
                    self.ip(ns, &["neigh", "show"])
                );
                if last_send.is_none_or(|t| t.elapsed() >= Duration::from_millis(200)) {
                    let _ = sock.send_to(b"arp warm-up", discard(ip));
                    last_send = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Whether `ns` has a usable (reachable, stale, delay, probe or permanent) neighbour
    /// entry for `ip`.
    pub fn neighbour_valid(&self, ns: Ns, ip: Ipv4Addr) -> bool {
        let out = self.ip(ns, &["neigh", "show", "to", &ip.to_string()]);
        out.lines().any(|l| {
            l.contains("lladdr")
                && ["REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT"]
                    .iter()
                    .any(|s| l.contains(s))
        })
    }

    /// Whether an XDP program is attached to `dev` in `ns` (`ip -d link` shows `prog/xdp`).
    pub fn xdp_attached(&self, ns: Ns, dev: &str) -> bool {
        self.ip(ns, &["-d", "link", "show", "dev", dev])
            .contains("prog/xdp")
    }

    /// Starts `hepfwd run --mode MODE` in fwd on `config` (which should set `[admin]
    /// listen = "127.0.0.1:9100"`; it is appended when missing) and waits until `/healthz`
    /// answers. Panics with its stderr when it does not come up.
    pub fn hepfwd(&self, mode: Mode, config: &str) -> Daemon {
        Daemon::start_in_netns(self.name(Ns::Fwd), mode, config)
            .unwrap_or_else(|e| panic!("starting hepfwd --mode {mode} in fwd: {e:#}"))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in &self.names {
            match Command::new("ip").args(["netns", "del", n]).output() {
                Ok(o) if o.status.success() => {}
                // Never added (a failure part way through `new`).
                Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No such file") => {}
                Ok(o) => eprintln!(
                    "cleanup: ip netns del {n}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => eprintln!("cleanup: ip netns del {n}: {e}"),
            }
        }
    }
}

/// Runs `f` on a new thread that entered the network namespace `name` (`ip netns` name);
/// the thread ends with `f`, so nothing else changes namespace.
pub fn in_netns<R: Send>(name: &str, f: impl FnOnce() -> R + Send) -> R {
    let path = format!("/var/run/netns/{name}");
    std::thread::scope(|s| {
        let t = std::thread::Builder::new()
            .name(format!("in-{name}"))
            .spawn_scoped(s, || {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: a valid namespace fd; setns changes only the calling thread, which
                // ends after `f`.
                let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .expect("spawn a thread");
        t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Like [`in_netns`] for fallible work.
pub fn try_in_netns<R: Send>(name: &str, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    if !std::path::Path::new(&format!("/var/run/netns/{name}")).exists() {
        bail!("no network namespace {name}");
    }
    in_netns(name, f).with_context(|| format!("in netns {name}"))
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
