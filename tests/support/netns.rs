//! The namespace topology of the end-to-end tests of the data plane (built by the shared
//! harness, [`hepfwd_harness::topology`]), plus what only these tests put in it: collectors
//! and agents ([`TopologyPeers`]) and the daemon.
//!
//! Sockets are opened on a thread that entered the namespace ([`Topology::within`]): a socket
//! keeps the namespace it was created in, so the test then uses it from any thread. The
//! daemon runs in `fwd` through `ip netns exec` ([`TopologyPeers::hepfwd`]); its admin server
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

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, bail};

pub use hepfwd_harness::netns::in_netns;
pub use hepfwd_harness::topology::{
    ADMIN, COL_A, COL_B, FWD_IN, FWD_OUT, IF_IN, IF_OUT, IF_PEER, LISTEN, Ns, SND, SND2, Topology,
};

use crate::collector::{Agent, TcpCollector, UdpCollector};
use crate::daemon::{Daemon, Mode};

/// The peers of these tests inside a [`Topology`]: collectors in col, agents in snd, the
/// daemon in fwd.
pub trait TopologyPeers {
    /// A UDP collector on `ip:port` in col.
    fn udp_collector(&self, name: &str, ip: Ipv4Addr, port: u16) -> UdpCollector;

    /// A TCP collector on `ip:port` in col.
    fn tcp_collector(&self, name: &str, ip: Ipv4Addr, port: u16) -> TcpCollector;

    /// A HEP agent in snd sending from `ip` ([`SND`] or [`SND2`]).
    fn agent(&self, ip: Ipv4Addr) -> Agent;

    /// Starts `hepfwd run --mode MODE` in fwd on `config` (which should set `[admin]
    /// listen = "127.0.0.1:9100"`; it is appended when missing) and waits until `/readyz`
    /// answers 200. Panics with its stderr when it does not come up.
    fn hepfwd(&self, mode: Mode, config: &str) -> Daemon;
}

impl TopologyPeers for Topology {
    fn udp_collector(&self, name: &str, ip: Ipv4Addr, port: u16) -> UdpCollector {
        self.within(Ns::Col, || UdpCollector::bind(name, (ip, port).into()))
    }

    fn tcp_collector(&self, name: &str, ip: Ipv4Addr, port: u16) -> TcpCollector {
        self.within(Ns::Col, || TcpCollector::bind(name, (ip, port).into()))
    }

    fn agent(&self, ip: Ipv4Addr) -> Agent {
        self.within(Ns::Snd, || Agent::bind(&ip.to_string()))
    }

    fn hepfwd(&self, mode: Mode, config: &str) -> Daemon {
        Daemon::start_in_netns(self.name(Ns::Fwd), mode, config)
            .unwrap_or_else(|e| panic!("starting hepfwd --mode {mode} in fwd: {e:#}"))
    }
}

/// Like [`in_netns`] for fallible work.
pub fn try_in_netns<R: Send>(name: &str, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    if !std::path::Path::new(&format!("/var/run/netns/{name}")).exists() {
        bail!("no network namespace {name}");
    }
    in_netns(name, f).with_context(|| format!("in netns {name}"))
}
