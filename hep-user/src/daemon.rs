//! `hepfwd run`: the daemon's lifecycle — start from a configuration, reload it on SIGHUP
//! without losing packets, drain and stop on SIGTERM.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::stats::Stats;
use crate::config::plan::{DestinationPlan, Plan, Transport};
use crate::engine::{DestinationHandle, Engine, FrameQueue};
use crate::io::tcp_listener::TcpListener;
use crate::io::tcp_sink::TcpSink;
use crate::io::udp_listener::UdpListener;
pub use crate::xdp::dataplane::DataPath;
use crate::xdp::dataplane::{Choice, DataPlane, SharedDataPlane, choose};

/// What identifies a TCP sink across reloads: a destination keeps its connection and queue
/// when none of these change.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SinkKey {
    name: String,
    address: SocketAddr,
    queue: usize,
}

impl SinkKey {
    fn of(d: &DestinationPlan) -> Self {
        SinkKey {
            name: d.name.clone(),
            address: d.address,
            queue: d.queue,
        }
    }
}

/// The running daemon.
pub struct Daemon {
    stats: Arc<Stats>,
    engine: Arc<ArcSwap<Engine>>,
    sinks: HashMap<SinkKey, TcpSink>,
    udp: HashMap<SocketAddr, UdpListener>,
    tcp: HashMap<SocketAddr, TcpListener>,
    generation: u64,
    epoch: Instant,
    config: PathBuf,
    /// The kernel data plane, when the run uses it.
    dataplane: Option<Arc<Mutex<DataPlane>>>,
}

/// Addresses the daemon actually bound (ports resolved), for logs and tests.
#[derive(Debug, Clone, Default)]
pub struct Bound {
    /// UDP listeners: configured address → bound address.
    pub udp: Vec<(SocketAddr, SocketAddr)>,
    /// TCP listeners: configured address → bound address.
    pub tcp: Vec<(SocketAddr, SocketAddr)>,
}

impl Daemon {
    /// Loads the configuration and starts everything it names.
    pub async fn start(config: PathBuf, path: DataPath) -> Result<Self> {
        let plan = crate::config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let choice = choose(
            path,
            crate::xdp::built_with_xdp(),
            plan.xdp.interfaces.len(),
        );
        if let Choice::Fail(why) = &choice {
            bail!("{why}");
        }
        let stats = Arc::new(Stats::default());
        let epoch = Instant::now();
        let mut d = Daemon {
            stats: stats.clone(),
            engine: Arc::new(ArcSwap::from_pointee(Engine::new(
                plan.clone(),
                0,
                Vec::new(),
                stats.clone(),
                epoch,
            ))),
            sinks: HashMap::new(),
            udp: HashMap::new(),
            tcp: HashMap::new(),
            generation: 0,
            epoch,
            config,
            dataplane: None,
        };
        d.install(plan.clone()).await?;
        // The kernel path starts once userspace listens: what it passes up has a socket.
        match choice {
            Choice::Userspace(why) => tracing::info!("data path: userspace ({why})"),
            Choice::Fail(_) => {}
            Choice::TryXdp => match DataPlane::start(&plan) {
                Ok(dp) => {
                    tracing::info!(
                        interfaces = ?dp.interfaces(),
                        mirrors_in_kernel = dp.kernel_mirrors(),
                        "data path: xdp, with userspace for what the kernel passes up"
                    );
                    let dp = Arc::new(Mutex::new(dp));
                    d.stats.set_xdp(Some(Arc::new(SharedDataPlane(dp.clone()))));
                    d.dataplane = Some(dp);
                }
                Err(e) if path == DataPath::Auto => {
                    tracing::warn!("data path: userspace; the XDP data plane could not start: {e}")
                }
                Err(e) => {
                    d.shutdown().await;
                    bail!("--mode xdp: {e}");
                }
            },
        }
        Ok(d)
    }

    /// Installs `plan` into the kernel data plane, if it runs; if the kernel cannot take
    /// it, the kernel passes everything to userspace (which has `plan` already).
    fn install_kernel(&self, plan: &Plan) {
        let Some(dp) = &self.dataplane else { return };
        let mut dp = match dp.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Err(e) = dp.install(plan) {
            tracing::error!(error = %e, "the kernel could not take the new configuration; it passes every packet to userspace until the next reload");
            if let Err(e) = dp.pass_all() {
                tracing::error!(error = %e, "clearing the kernel tables failed");
            }
        }
    }

    /// The counters (for the admin server).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The current engine.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.load_full()
    }

    /// Installs a validated plan: the listeners it adds are bound first (if one cannot be,
    /// nothing changes), then destinations (keeping unchanged TCP connections and queues),
    /// a new engine swapped in atomically, then the listeners it dropped are stopped.
    async fn install(&mut self, plan: Plan) -> Result<()> {
        let want_udp: Vec<SocketAddr> = plan.listeners.iter().filter_map(|l| l.udp).collect();
        let want_tcp: Vec<SocketAddr> = plan.listeners.iter().filter_map(|l| l.tcp).collect();
        let (new_udp, new_tcp) = self.bind_new_listeners(&plan, &want_udp, &want_tcp).await?;
        let handle = tokio::runtime::Handle::current();
        let mut sinks = HashMap::new();
        let mut dests = Vec::new();
        for d in &plan.destinations {
            let stats = self.stats.destination(&d.name);
            let queue: Option<Arc<dyn FrameQueue>> = match d.transport {
                Transport::Udp => {
                    // Reachable until an ICMP error says otherwise; a destination in its
                    // hold-down keeps its state across a reload (the flusher restores it).
                    use std::sync::atomic::Ordering::Relaxed;
                    if stats.last_error_ms.load(Relaxed) == 0 {
                        stats.connected.store(true, Relaxed);
                    }
                    None
                }
                Transport::Tcp => {
                    let key = SinkKey::of(d);
                    let sink = match self.sinks.remove(&key) {
                        Some(s) => s,
                        None => TcpSink::spawn(
                            d.name.clone(),
                            d.address,
                            d.queue,
                            stats.clone(),
                            &handle,
                        ),
                    };
                    sinks.insert(key, sink.clone());
                    Some(Arc::new(sink))
                }
            };
            dests.push(DestinationHandle {
                plan: d.clone(),
                stats,
                queue,
            });
        }
        self.generation += 1;
        let engine = Engine::new(
            plan.clone(),
            self.generation,
            dests,
            self.stats.clone(),
            self.epoch,
        );
        self.engine.store(Arc::new(engine));
        self.install_kernel(&plan);
        // Sinks of destinations that are gone: the old engine may still hold them for a
        // batch; they finish what is queued and stop when the last handle is dropped.
        self.sinks = sinks;

        self.udp.extend(new_udp);
        self.tcp.extend(new_tcp);
        let gone_udp: Vec<SocketAddr> = self
            .udp
            .keys()
            .filter(|a| !want_udp.contains(a))
            .copied()
            .collect();
        for a in gone_udp {
            if let Some(l) = self.udp.remove(&a) {
                tokio::task::spawn_blocking(move || l.stop());
                tracing::info!(%a, "stopped listening on UDP");
            }
        }
        let gone_tcp: Vec<SocketAddr> = self
            .tcp
            .keys()
            .filter(|a| !want_tcp.contains(a))
            .copied()
            .collect();
        for a in gone_tcp {
            if let Some(l) = self.tcp.remove(&a) {
                l.stop();
                tracing::info!(%a, "stopped listening on TCP");
            }
        }
        Ok(())
    }

    /// Binds the listeners `plan` adds, all or none: on an error the ones already bound are
    /// stopped, so the running configuration is left as it was.
    async fn bind_new_listeners(
        &self,
        plan: &Plan,
        want_udp: &[SocketAddr],
        want_tcp: &[SocketAddr],
    ) -> Result<(
        HashMap<SocketAddr, UdpListener>,
        HashMap<SocketAddr, TcpListener>,
    )> {
        let mut udp = HashMap::new();
        let mut tcp = HashMap::new();
        let mut result = Ok(());
        for a in want_udp.iter().filter(|a| !self.udp.contains_key(*a)) {
            let e = &plan.engine;
            match UdpListener::start(*a, e.workers, e.batch, e.recv_buffer, self.engine.clone()) {
                Ok(l) => {
                    tracing::info!(configured = %a, bound = %l.addr, workers = e.workers, "listening on UDP");
                    udp.insert(*a, l);
                }
                Err(e) => {
                    result = Err(anyhow::Error::new(e).context(format!("listening on UDP {a}")));
                    break;
                }
            }
        }
        if result.is_ok() {
            for a in want_tcp.iter().filter(|a| !self.tcp.contains_key(*a)) {
                match TcpListener::start(*a, self.engine.clone()).await {
                    Ok(l) => {
                        tracing::info!(configured = %a, bound = %l.addr, "listening on TCP");
                        tcp.insert(*a, l);
                    }
                    Err(e) => {
                        result =
                            Err(anyhow::Error::new(e).context(format!("listening on TCP {a}")));
                        break;
                    }
                }
            }
        }
        if let Err(e) = result {
            for (_, l) in tcp {
                l.stop();
            }
            let udp: Vec<UdpListener> = udp.into_values().collect();
            let _ =
                tokio::task::spawn_blocking(move || udp.into_iter().for_each(UdpListener::stop))
                    .await;
            return Err(e);
        }
        Ok((udp, tcp))
    }

    /// The bound addresses.
    pub fn bound(&self) -> Bound {
        Bound {
            udp: self.udp.iter().map(|(c, l)| (*c, l.addr)).collect(),
            tcp: self.tcp.iter().map(|(c, l)| (*c, l.addr)).collect(),
        }
    }

    /// Re-reads the configuration; on any error keeps the running one.
    pub async fn reload(&mut self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let plan = match crate::config::load(&self.config) {
            Ok(p) => p,
            Err(e) => {
                self.stats.global.reloads_failed.fetch_add(1, Relaxed);
                tracing::error!("reload rejected, the running configuration stays:\n{e}");
                return false;
            }
        };
        match self.install(plan).await {
            Ok(()) => {
                self.stats.global.reloads_ok.fetch_add(1, Relaxed);
                tracing::info!(generation = self.generation, "configuration reloaded");
                true
            }
            Err(e) => {
                self.stats.global.reloads_failed.fetch_add(1, Relaxed);
                tracing::error!(error = %format!("{e:#}"), "reload rejected, the running configuration stays");
                false
            }
        }
    }

    /// Stops receiving, then gives TCP queues a bounded time to drain.
    pub async fn shutdown(mut self) {
        let drain = self.engine.load().plan.engine.drain_timeout;
        let udp: Vec<UdpListener> = self.udp.drain().map(|(_, l)| l).collect();
        let _ =
            tokio::task::spawn_blocking(move || udp.into_iter().for_each(UdpListener::stop)).await;
        for (_, l) in self.tcp.drain() {
            l.stop();
        }
        let drains = self.sinks.values().map(|s| {
            let s = s.clone();
            async move { s.drain(drain).await }
        });
        let all = futures_util::future::join_all(drains).await;
        if all.iter().all(|ok| *ok) {
            tracing::info!("all TCP queues drained");
        } else {
            tracing::warn!(
                ?drain,
                "some TCP queues did not drain in time; the rest is counted as dropped"
            );
        }
        // Last: the programs detach when their links drop.
        self.stats.set_xdp(None);
        if self.dataplane.take().is_some() {
            tracing::info!("XDP data plane detached");
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: PathBuf, path: DataPath) -> Result<()> {
    let mut d = Daemon::start(config, path).await?;
    let admin = d.engine().plan.admin;
    if let Some(addr) = admin {
        let (local, serve) = crate::admin::bind(addr, d.stats()).await?;
        tracing::info!(%local, "admin server: /metrics, /healthz");
        tokio::spawn(serve);
    }
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tracing::info!("running");
    loop {
        tokio::select! {
            _ = hup.recv() => { d.reload().await; }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping");
    d.shutdown().await;
    Ok(())
}
