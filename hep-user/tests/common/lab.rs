//! A network namespace for XDP tests that need the kernel's routing answers
//! (`bpf_fib_lookup`): two veth pairs with fixed interface indices and MACs, forwarding on,
//! permanent neighbour entries for the collectors. The program is test-run on frames
//! "received" on `in0` from a thread inside the namespace; with [`Lab::with_ends`] the peers
//! live in a sender and a collector namespace, for real traffic. Deleted on drop, also when
//! the test fails.

#![allow(dead_code)] // each test uses part of it

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::process::Command;

/// `in0`'s interface index (frames arrive here).
pub const IN_IFINDEX: u32 = 50;
/// `out0`'s interface index (toward the collectors).
pub const OUT_IFINDEX: u32 = 52;
/// `in0`'s MAC.
pub const IN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa0];
/// `out0`'s MAC.
pub const OUT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb0];

/// Neighbours with permanent entries: (address, MAC, device).
pub const NEIGHBOURS: &[(&str, [u8; 6], &str)] = &[
    ("198.18.2.2", [0x02, 0, 0, 0, 0x02, 0x02], "out0"),
    ("198.18.2.4", [0x02, 0, 0, 0, 0x02, 0x04], "out0"),
    ("198.18.1.5", [0x02, 0, 0, 0, 0x01, 0x05], "in0"),
    ("fd00:18:2::2", [0x02, 0, 0, 0, 0x02, 0x22], "out0"),
];

/// The MAC of neighbour `addr`.
pub fn neighbour_mac(addr: &str) -> [u8; 6] {
    NEIGHBOURS
        .iter()
        .find(|n| n.0 == addr)
        .map(|n| n.1)
        .unwrap_or_else(|| panic!("{addr} is not a lab neighbour"))
}

/// The namespace (and, with [`Lab::with_ends`], a sender and a collector namespace).
pub struct Lab {
    /// Its name (`ip netns` name).
    pub name: String,
    /// The sender and collector namespaces, if any.
    ends: Vec<String>,
}

/// The collector namespace's MAC (on `out1`; both collector addresses are there).
pub const COLLECTOR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x02];

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    /// Builds the namespace `hepfwd-<tag>-<pid>`:
    /// `in0` (198.18.1.2/24, fd00:18:1::2/64) ↔ `in1`, `out0` (198.18.2.1/24,
    /// fd00:18:2::1/64) ↔ `out1`, forwarding on, [`NEIGHBOURS`] permanent.
    pub fn new(tag: &str) -> Lab {
        let name = format!("hepfwd-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let lab = Lab {
            name,
            ends: Vec::new(),
        };
        let in_ix = IN_IFINDEX.to_string();
        let in1_ix = (IN_IFINDEX + 1).to_string();
        let out_ix = OUT_IFINDEX.to_string();
        let out1_ix = (OUT_IFINDEX + 1).to_string();
        lab.ip(&[
            "link", "add", "in0", "index", &in_ix, "type", "veth", "peer", "name", "in1", "index",
            &in1_ix,
        ]);
        lab.ip(&[
            "link", "add", "out0", "index", &out_ix, "type", "veth", "peer", "name", "out1",
            "index", &out1_ix,
        ]);
        lab.ip(&["link", "set", "in0", "address", &mac(IN_MAC)]);
        lab.ip(&["link", "set", "out0", "address", &mac(OUT_MAC)]);
        for dev in ["lo", "in0", "in1", "out0", "out1"] {
            lab.ip(&["link", "set", dev, "up"]);
        }
        lab.ip(&["addr", "add", "198.18.1.2/24", "dev", "in0"]);
        lab.ip(&["addr", "add", "198.18.2.1/24", "dev", "out0"]);
        lab.ip(&[
            "-6",
            "addr",
            "add",
            "fd00:18:1::2/64",
            "dev",
            "in0",
            "nodad",
        ]);
        lab.ip(&[
            "-6",
            "addr",
            "add",
            "fd00:18:2::1/64",
            "dev",
            "out0",
            "nodad",
        ]);
        for (addr, m, dev) in NEIGHBOURS {
            lab.ip(&[
                "neigh",
                "replace",
                addr,
                "lladdr",
                &mac(*m),
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        for key in [
            "net.ipv4.conf.all.forwarding=1",
            "net.ipv4.conf.in0.forwarding=1",
            "net.ipv6.conf.all.forwarding=1",
        ] {
            run("ip", &["netns", "exec", &lab.name, "sysctl", "-qw", key]);
        }
        lab
    }

    /// [`Lab::new`], with `in1` moved to a sender namespace (`<name>-snd`, 198.18.1.1/24,
    /// default route via `in0`) and `out1` to a collector namespace (`<name>-col`,
    /// 198.18.2.2/24 and 198.18.2.4/24, MAC [`COLLECTOR_MAC`], route back via `out0`); the
    /// lab's neighbour entries for both collector addresses point at that MAC.
    pub fn with_ends(tag: &str) -> Lab {
        let mut lab = Lab::new(tag);
        let snd = format!("{}-snd", lab.name);
        let col = format!("{}-col", lab.name);
        for ns in [&snd, &col] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            run("ip", &["netns", "add", ns]);
            lab.ends.push(ns.clone());
        }
        lab.ip(&["link", "set", "in1", "netns", &snd]);
        lab.ip(&["link", "set", "out1", "netns", &col]);
        let on = |ns: &str, args: &[&str]| {
            let mut all = vec!["-n", ns];
            all.extend_from_slice(args);
            run("ip", &all);
        };
        on(&snd, &["addr", "add", "198.18.1.1/24", "dev", "in1"]);
        on(
            &col,
            &["link", "set", "out1", "address", &mac(COLLECTOR_MAC)],
        );
        on(&col, &["addr", "add", "198.18.2.2/24", "dev", "out1"]);
        on(&col, &["addr", "add", "198.18.2.4/24", "dev", "out1"]);
        for (ns, dev) in [(&snd, "in1"), (&snd, "lo"), (&col, "out1"), (&col, "lo")] {
            on(ns, &["link", "set", dev, "up"]);
        }
        on(&snd, &["route", "add", "default", "via", "198.18.1.2"]);
        on(&col, &["route", "add", "default", "via", "198.18.2.1"]);
        for addr in ["198.18.2.2", "198.18.2.4"] {
            lab.ip(&[
                "neigh",
                "replace",
                addr,
                "lladdr",
                &mac(COLLECTOR_MAC),
                "dev",
                "out0",
                "nud",
                "permanent",
            ]);
        }
        lab
    }

    /// `ip -n NAME ARGS`, asserting success.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Runs `f` on a thread inside the sender namespace ([`Lab::with_ends`]).
    pub fn in_sender<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        within(&self.ends[0], f)
    }

    /// Runs `f` on a thread inside the collector namespace ([`Lab::with_ends`]).
    pub fn in_collector<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        within(&self.ends[1], f)
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        within(&self.name, f)
    }
}

/// Runs `f` on a thread inside namespace `ns`.
fn within<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let target = File::open(format!("/var/run/netns/{ns}")).expect("open the netns file");
            // SAFETY: a valid namespace fd; setns changes only this (scoped) thread.
            let r = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the thread inside the lab panicked")
    })
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.ends.iter().chain([&self.name]) {
            match Command::new("ip").args(["netns", "del", ns]).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "cleanup: ip netns del {ns}: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("cleanup: ip netns del {ns}: {e}"),
            }
        }
    }
}
