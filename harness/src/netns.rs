//! A network namespace owned by a test: created by [`Netns::create`], deleted (with every
//! interface in it) when the value is dropped, also while a failing test unwinds.
//!
//! Work inside it runs on a thread that entered it ([`Netns::within`], [`in_netns`]): a
//! socket keeps the namespace it was created in, so the test then uses it from any thread.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::command::{ip, mac_text, run};

/// Makes names unique within a test process (parallel tests of one binary).
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A unique namespace name base for the test tagged `tag`: `hepfwd-<tag>-<pid>-<seq>`
/// (keep the tag short). Distinct across parallel tests and test processes.
pub fn unique_base(tag: &str) -> String {
    format!(
        "hepfwd-{tag}-{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace (`ip netns` name), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// The `ip netns` name.
    name: String,
}

/// One veth pair to create with [`Netns::add_veth`].
#[derive(Debug, Clone, Copy)]
pub struct VethPair<'a> {
    /// The end created in the namespace [`Netns::add_veth`] is called on.
    pub name: &'a str,
    /// Its interface index (`None`: the kernel picks one).
    pub index: Option<u32>,
    /// The peer end's name.
    pub peer: &'a str,
    /// The peer's interface index (`None`: the kernel picks one).
    pub peer_index: Option<u32>,
    /// Where the peer lives (`None`: the same namespace).
    pub peer_namespace: Option<&'a Netns>,
}

impl<'a> VethPair<'a> {
    /// `name` ↔ `peer`, both in the same namespace, indices picked by the kernel.
    pub fn new(name: &'a str, peer: &'a str) -> VethPair<'a> {
        VethPair {
            name,
            index: None,
            peer,
            peer_index: None,
            peer_namespace: None,
        }
    }

    /// Fixed interface indices for both ends.
    pub fn indices(self, index: u32, peer_index: u32) -> VethPair<'a> {
        VethPair {
            index: Some(index),
            peer_index: Some(peer_index),
            ..self
        }
    }

    /// The peer end created in `namespace`.
    pub fn peer_in(self, namespace: &'a Netns) -> VethPair<'a> {
        VethPair {
            peer_namespace: Some(namespace),
            ..self
        }
    }
}

/// Neighbour states that a lookup can use (a resolved entry).
const VALID_STATES: [&str; 5] = ["REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT"];

impl Netns {
    /// Creates namespace `name` (a leftover of a crashed run with the same name is deleted
    /// first). Panics when `ip netns add` fails.
    pub fn create(name: impl Into<String>) -> Netns {
        let name = name.into();
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        Netns { name }
    }

    /// The `ip netns` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`, asserting success; its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ip netns exec NAME PROGRAM ARGS`, asserting success; its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip netns exec NAME PROGRAM`, for a caller that adds arguments and decides what a
    /// failure means.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", self.name.as_str(), program]);
        command
    }

    /// `sysctl -qw KEY=VALUE` inside the namespace.
    pub fn sysctl(&self, setting: &str) {
        self.exec("sysctl", &["-qw", setting]);
    }

    /// Runs `work` on a thread that entered this namespace and returns its result.
    pub fn within<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        in_netns(&self.name, work)
    }

    /// Creates the veth pair `pair` (its first end in this namespace).
    pub fn add_veth(&self, pair: &VethPair<'_>) {
        let index = pair.index.map(|i| i.to_string());
        let peer_index = pair.peer_index.map(|i| i.to_string());
        let mut args = vec!["link", "add", pair.name];
        if let Some(index) = &index {
            args.extend(["index", index.as_str()]);
        }
        args.extend(["type", "veth", "peer", "name", pair.peer]);
        if let Some(peer_index) = &peer_index {
            args.extend(["index", peer_index.as_str()]);
        }
        if let Some(namespace) = pair.peer_namespace {
            args.extend(["netns", namespace.name()]);
        }
        self.ip(&args);
    }

    /// Moves interface `device` into `target`.
    pub fn move_link(&self, device: &str, target: &Netns) {
        self.ip(&["link", "set", device, "netns", target.name()]);
    }

    /// Sets `device`'s MAC address.
    pub fn set_mac(&self, device: &str, mac: [u8; 6]) {
        self.ip(&["link", "set", device, "address", &mac_text(mac)]);
    }

    /// Brings each of `devices` up.
    pub fn set_up(&self, devices: &[&str]) {
        for device in devices {
            self.ip(&["link", "set", device, "up"]);
        }
    }

    /// Adds `address` (`ADDRESS/PREFIX`) to `device`; an IPv6 address without duplicate
    /// address detection, so it is usable at once.
    pub fn add_address(&self, device: &str, address: &str) {
        if address.contains(':') {
            self.ip(&["-6", "addr", "add", address, "dev", device, "nodad"]);
        } else {
            self.ip(&["addr", "add", address, "dev", device]);
        }
    }

    /// Adds a default route via `gateway`.
    pub fn default_route(&self, gateway: IpAddr) {
        self.ip(&["route", "add", "default", "via", &gateway.to_string()]);
    }

    /// A permanent neighbour entry: `address` is at `mac` on `device`.
    pub fn permanent_neighbour(&self, address: &str, mac: [u8; 6], device: &str) {
        self.ip(&[
            "neigh",
            "replace",
            address,
            "lladdr",
            &mac_text(mac),
            "dev",
            device,
            "nud",
            "permanent",
        ]);
    }

    /// Whether this namespace has a usable (reachable, stale, delay, probe or permanent)
    /// neighbour entry for `address`.
    pub fn neighbour_valid(&self, address: IpAddr) -> bool {
        let shown = self.ip(&["neigh", "show", "to", &address.to_string()]);
        shown.lines().any(|line| {
            line.contains("lladdr") && VALID_STATES.iter().any(|state| line.contains(state))
        })
    }

    /// Resolves the neighbour entries for `targets` from `source` (an address of this
    /// namespace): one UDP datagram to the discard port of each, and one more every 200 ms
    /// while unresolved, until every entry is valid. Panics, showing the neighbour table,
    /// when `deadline` passes first.
    pub fn warm_neighbours(&self, source: IpAddr, targets: &[IpAddr], deadline: Instant) {
        let socket = self.within(|| {
            UdpSocket::bind(SocketAddr::new(source, 0))
                .unwrap_or_else(|error| panic!("bind UDP {source} in {}: {error}", self.name))
        });
        for target in targets {
            let mut last_send: Option<Instant> = None;
            while !self.neighbour_valid(*target) {
                assert!(
                    Instant::now() < deadline,
                    "no neighbour entry for {target} in {} in time:\n{}",
                    self.name,
                    self.ip(&["neigh", "show"])
                );
                if last_send.is_none_or(|sent| sent.elapsed() >= Duration::from_millis(200)) {
                    let _ = socket.send_to(b"arp warm-up", SocketAddr::new(*target, 9));
                    last_send = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Whether an XDP program is attached to `device` (`ip -d link` shows `prog/xdp`).
    pub fn xdp_attached(&self, device: &str) -> bool {
        self.ip(&["-d", "link", "show", "dev", device])
            .contains("prog/xdp")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(output) if output.status.success() => {}
            // Already gone.
            Ok(output) if String::from_utf8_lossy(&output.stderr).contains("No such file") => {}
            Ok(output) => eprintln!(
                "cleanup: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(error) => eprintln!("cleanup: ip netns del {}: {error}", self.name),
        }
    }
}

/// Runs `work` on a new thread that entered the network namespace `name` (`ip netns`
/// name); the thread ends with `work`, so nothing else changes namespace. A panic inside
/// `work` is resumed on the caller's thread.
pub fn in_netns<R: Send>(name: &str, work: impl FnOnce() -> R + Send) -> R {
    let path = format!("/var/run/netns/{name}");
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name(format!("in-{name}"))
            .spawn_scoped(scope, || {
                let namespace =
                    File::open(&path).unwrap_or_else(|error| panic!("open {path}: {error}"));
                // SAFETY: a valid namespace fd; setns changes only the calling thread, which
                // ends after `work`.
                let result = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    result,
                    0,
                    "setns {path}: {}",
                    std::io::Error::last_os_error()
                );
                work()
            })
            .expect("spawn a thread");
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
