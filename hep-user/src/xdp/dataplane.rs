//! [`DataPlane`]: the kernel data plane as the daemon runs it — the loaded programs, their
//! attachments to the `[xdp] interfaces`, the counter slots, and the tables of the current
//! configuration — and [`choose`], which says whether a run may use it.
//!
//! Userspace always runs as well: it handles everything the kernel passes up.

use std::sync::{Arc, Mutex};

use aya::maps::{MapData, PerCpuArray};
use aya::programs::tc::SchedClassifierLink;
use hep_common::abi::{DEFAULT_HEP_PORT, XdpCounter};
use hep_common::abi::{DEST_COUNTERS_MAP, DestCounter, ROUTE_COUNTERS_MAP, RouteCounter};

use super::compile::{HostNet, Slots, compile, describe};
use super::next_hop::{Invalidation, NextHops, Watch};
use super::{LoadOptions, XdpError, XdpProgram};
use crate::admin::stats::{XdpReading, XdpSource};
use crate::config::plan::Plan;

/// The data path the operator asked for with `hepfwd run --mode` (`auto`, `xdp`,
/// `userspace`): the one type from the command line through the daemon to [`choose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataPath {
    /// XDP where possible, else userspace.
    Auto,
    /// XDP or fail.
    Xdp,
    /// Userspace only.
    Userspace,
}

/// The data path a run takes, before trying the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Load and attach the XDP program (if that fails: `Auto` falls back, `Xdp` fails).
    TryXdp,
    /// Userspace only, and why.
    Userspace(String),
    /// Refuse to start, and why (`--mode xdp` that cannot be honoured).
    Fail(String),
}

/// Chooses the data path from what is known before loading anything: the mode asked for,
/// whether this binary embeds the XDP program, and how many interfaces `[xdp]` names.
/// (Privileges and drivers are found out by trying.)
pub fn choose(requested: DataPath, built_with_xdp: bool, interfaces: usize) -> Choice {
    let blocker = if !built_with_xdp {
        Some("this binary was built without the XDP program (AYA_BUILD_SKIP=1)".to_string())
    } else if interfaces == 0 {
        Some("no [xdp] interfaces are configured".to_string())
    } else {
        None
    };
    match (requested, blocker) {
        (DataPath::Userspace, _) => Choice::Userspace("--mode userspace".into()),
        (DataPath::Auto, Some(why)) => Choice::Userspace(why),
        (DataPath::Xdp, Some(why)) => Choice::Fail(format!("--mode xdp: {why}")),
        (_, None) => Choice::TryXdp,
    }
}

/// The running kernel data plane. Dropping it detaches everything (bpf_links).
pub struct DataPlane {
    program: XdpProgram,
    mirrors: Vec<SchedClassifierLink>,
    kernel_mirrors: bool,
    interfaces: Vec<String>,
    slots: Slots,
    routes: Vec<String>,
    destinations: Vec<String>,
    /// The next-hop cache's generation (moved on every install and by `_watch`).
    next_hops: NextHops,
    /// The netlink listener that invalidates the next-hop cache (`None`: the cache is off).
    _watch: Option<Watch>,
    _log_drain: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("interfaces", &self.interfaces)
            .field("kernel_mirrors", &self.kernel_mirrors)
            .finish_non_exhaustive()
    }
}

impl DataPlane {
    /// Loads the programs, attaches them to `plan.xdp.interfaces` (the mirror program too:
    /// if it cannot attach, mirror routes stay in userspace), installs `plan`'s tables and
    /// starts the kernel log drain. Must run inside a tokio runtime.
    pub fn start(plan: &Plan) -> Result<DataPlane, XdpError> {
        let hep_port = plan
            .listeners
            .iter()
            .find_map(|l| l.udp)
            .map_or(DEFAULT_HEP_PORT, |a| a.port());
        let mut program = XdpProgram::load(&LoadOptions {
            hep_port,
            ..LoadOptions::default()
        })?;
        for iface in &plan.xdp.interfaces {
            program.attach(iface, plan.xdp.attach)?;
            warn_if_not_forwarding(iface);
        }
        let mut mirrors = Vec::new();
        let mut kernel_mirrors = true;
        for iface in &plan.xdp.interfaces {
            match program.attach_mirror(iface) {
                Ok(l) => mirrors.push(l),
                Err(e) => {
                    tracing::warn!(iface, error = %e, "the mirror program cannot attach: mirror routes run in userspace");
                    mirrors.clear();
                    kernel_mirrors = false;
                    break;
                }
            }
        }
        let log_drain = program.spawn_log_drain()?;
        // The listener before the tables: from the first steer on, every change counts.
        let next_hops = program.next_hops()?;
        let watch = match next_hops.watch() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "the next-hop cache stays off: every steered packet is looked up");
                None
            }
        };
        let mut dp = DataPlane {
            program,
            mirrors,
            kernel_mirrors,
            interfaces: plan.xdp.interfaces.clone(),
            slots: Slots::default(),
            routes: Vec::new(),
            destinations: Vec::new(),
            next_hops,
            _watch: watch,
            _log_drain: log_drain,
        };
        dp.install(plan)?;
        Ok(dp)
    }

    /// Compiles `plan` and swaps its tables in (one bank flip). Interfaces are attached at
    /// start only: a change of `[xdp]` is logged and takes effect at the next start.
    pub fn install(&mut self, plan: &Plan) -> Result<(), XdpError> {
        if !self.routes.is_empty() && plan.xdp.interfaces != self.interfaces {
            tracing::warn!(
                running = ?self.interfaces,
                configured = ?plan.xdp.interfaces,
                "[xdp] interfaces changed: restart hepfwd to attach to the new ones"
            );
        }
        let t = compile(plan, &mut self.slots, &HostNet, self.kernel_mirrors);
        let bank = self.program.install(&t)?;
        self.invalidate_next_hops();
        tracing::info!(
            bank,
            mirrors_in_kernel = self.kernel_mirrors,
            "kernel tables installed; route placement:\n{}",
            describe(&t)
        );
        self.routes = t.placements.iter().map(|p| p.route.clone()).collect();
        self.destinations = t.destination_names.clone();
        Ok(())
    }

    /// After a configuration the kernel could not take: empty tables, so the kernel passes
    /// every packet and userspace (which has the new configuration) decides alone.
    pub fn pass_all(&mut self) -> Result<(), XdpError> {
        self.program
            .install(&super::compile::KernelTables::default())?;
        self.invalidate_next_hops();
        self.routes.clear();
        self.destinations.clear();
        Ok(())
    }

    /// After a bank flip: the destinations may have changed, so may their next hops.
    /// (Each cached entry also names the exact query it answers, so a failure here cannot
    /// send a packet to another destination's next hop.)
    fn invalidate_next_hops(&mut self) {
        if let Err(e) = self.next_hops.invalidate(Invalidation::Install) {
            tracing::error!(error = %e, "invalidating the next-hop cache failed");
        }
    }

    /// The interfaces the XDP program is attached to.
    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    /// Whether mirror routes run in the kernel (the TC program is attached).
    pub fn kernel_mirrors(&self) -> bool {
        self.kernel_mirrors && !self.mirrors.is_empty()
    }

    /// Every counter now, summed over CPUs.
    pub fn reading(&self) -> Result<XdpReading, XdpError> {
        let c = self.program.counters()?;
        let global = XdpCounter::ALL
            .iter()
            .map(|x| (x.name(), c.get(*x)))
            .collect();
        let ebpf = self.program.ebpf();
        let array = |name: &str| -> Result<PerCpuArray<&MapData, u64>, XdpError> {
            let m = ebpf
                .map(name)
                .ok_or_else(|| XdpError::MissingItem(format!("map {name}")))?;
            Ok(PerCpuArray::try_from(m)?)
        };
        let sum = |a: &PerCpuArray<&MapData, u64>, i: u32| -> Result<u64, XdpError> {
            Ok(a.get(&i, 0)?.iter().fold(0u64, |s, v| s.wrapping_add(*v)))
        };
        let rc = array(ROUTE_COUNTERS_MAP)?;
        let mut routes = Vec::new();
        for name in &self.routes {
            let Some(slot) = self.slots.routes().find(|(n, _)| n == name).map(|(_, s)| s) else {
                continue;
            };
            let mut v = [0u64; RouteCounter::COUNT];
            for (i, x) in v.iter_mut().enumerate() {
                *x = sum(&rc, slot * RouteCounter::COUNT as u32 + i as u32)?;
            }
            routes.push((name.clone(), v));
        }
        let dc = array(DEST_COUNTERS_MAP)?;
        let mut destinations = Vec::new();
        for name in &self.destinations {
            let Some(slot) = self
                .slots
                .destinations()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s)
            else {
                continue;
            };
            let mut v = [0u64; DestCounter::COUNT];
            for (i, x) in v.iter_mut().enumerate() {
                *x = sum(&dc, slot * DestCounter::COUNT as u32 + i as u32)?;
            }
            destinations.push((name.clone(), v));
        }
        Ok(XdpReading {
            global,
            routes,
            destinations,
            next_hop_invalidations: self.next_hops.invalidations(),
        })
    }
}

/// `bpf_fib_lookup` answers only for interfaces that forward (`FWD_DISABLED` otherwise):
/// without it every steer falls back to userspace. Said once at start, with the fix.
fn warn_if_not_forwarding(iface: &str) {
    for (v, path) in [
        (
            "IPv4",
            format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"),
        ),
        (
            "IPv6",
            format!("/proc/sys/net/ipv6/conf/{iface}/forwarding"),
        ),
    ] {
        if std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == "0") {
            tracing::warn!(
                iface,
                "{v} forwarding is off on {iface}: the kernel cannot look up next hops, so {v} packets to steer or mirror go to userspace (counted as steer_fallback); enable it with `sysctl -w {}=1`",
                path.trim_start_matches("/proc/sys/").replace('/', ".")
            );
        }
    }
}

/// A [`DataPlane`] shared between the daemon (reloads) and `/metrics` (readings).
#[derive(Debug, Clone)]
pub struct SharedDataPlane(pub Arc<Mutex<DataPlane>>);

impl XdpSource for SharedDataPlane {
    fn read(&self) -> Option<XdpReading> {
        let dp = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match dp.reading() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "reading the XDP counters failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_path_follows_the_mode_and_what_is_known() {
        use DataPath::*;
        assert_eq!(
            choose(Userspace, true, 2),
            Choice::Userspace("--mode userspace".into())
        );
        assert_eq!(choose(Auto, true, 1), Choice::TryXdp);
        assert_eq!(choose(Xdp, true, 1), Choice::TryXdp);
        match choose(Auto, true, 0) {
            Choice::Userspace(why) => assert!(why.contains("no [xdp] interfaces"), "{why}"),
            other => panic!("{other:?}"),
        }
        match choose(Auto, false, 1) {
            Choice::Userspace(why) => assert!(why.contains("AYA_BUILD_SKIP"), "{why}"),
            other => panic!("{other:?}"),
        }
        match choose(Xdp, true, 0) {
            Choice::Fail(why) => {
                assert!(
                    why.starts_with("--mode xdp") && why.contains("interfaces"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        match choose(Xdp, false, 3) {
            Choice::Fail(why) => assert!(why.contains("without the XDP program"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
