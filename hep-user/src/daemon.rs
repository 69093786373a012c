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

use crate::admin::stats::{DestinationHealth, HealthSource, Phase, Stats};
use crate::config::plan::{DestinationPlan, EngineTuning, Plan, Transport};
use crate::engine::{DestinationHandle, Engine, FrameQueue};
use crate::io::tcp_listener::TcpListener;
use crate::io::tcp_sink::{SinkOptions, SinkTls, TcpSink};
use crate::io::udp_listener::UdpListener;
use crate::notify::Notifier;
pub use crate::xdp::dataplane::DataPath;
use crate::xdp::dataplane::{Choice, DataPlane, SharedDataPlane, choose};

/// What identifies a TCP sink across reloads: a destination keeps its connection and queue
/// when none of these change.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SinkKey {
    name: String,
    /// As configured: a host name's sink stays when the name resolves anew (it is told the
    /// new address).
    address: String,
    options: SinkOptions,
    /// TLS or plain TCP (a TLS sink's files and server name change without a new sink:
    /// the next connection uses them).
    tls: bool,
}

impl SinkKey {
    fn of(d: &DestinationPlan) -> Self {
        SinkKey {
            name: d.name.clone(),
            address: d.configured_address(),
            options: SinkOptions {
                queue: d.queue,
                queue_bytes: d.queue_bytes,
                stall_timeout: d.stall_timeout,
                spool: d.spool.clone(),
            },
            tls: d.tls.is_some(),
        }
    }
}

/// The settings a reload does not apply (they take effect at the next start), as the
/// daemon started with them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RestartSettings {
    /// `[admin] listen`.
    admin: Option<SocketAddr>,
    /// `[engine] workers` (listeners that stay keep theirs).
    workers: usize,
    /// `[engine] batch` (listeners that stay keep theirs).
    batch: usize,
    /// `[engine] recv_buffer` (listeners that stay keep theirs).
    recv_buffer: usize,
    /// `[engine] listen_backlog` (listeners that stay keep theirs).
    listen_backlog: u32,
    /// `[xdp] interfaces`.
    xdp_interfaces: Vec<String>,
    /// `[xdp] attach`.
    xdp_attach: &'static str,
}

impl RestartSettings {
    fn of(plan: &Plan) -> Self {
        RestartSettings {
            admin: plan.admin,
            workers: plan.engine.workers,
            batch: plan.engine.batch,
            recv_buffer: plan.engine.recv_buffer,
            listen_backlog: plan.engine.listen_backlog,
            xdp_interfaces: plan.xdp.interfaces.clone(),
            xdp_attach: plan.xdp.attach.name(),
        }
    }

    /// Each setting that differs in `new`: (its name, the running value, the new value).
    fn changes(&self, new: &RestartSettings) -> Vec<(&'static str, String, String)> {
        fn admin(a: Option<SocketAddr>) -> String {
            a.map_or_else(|| "none".to_string(), |a| a.to_string())
        }
        let mut out = Vec::new();
        let mut compare = |name: &'static str, running: String, configured: String| {
            if running != configured {
                out.push((name, running, configured));
            }
        };
        compare("admin.listen", admin(self.admin), admin(new.admin));
        compare(
            "engine.workers",
            self.workers.to_string(),
            new.workers.to_string(),
        );
        compare(
            "engine.batch",
            self.batch.to_string(),
            new.batch.to_string(),
        );
        compare(
            "engine.recv_buffer",
            self.recv_buffer.to_string(),
            new.recv_buffer.to_string(),
        );
        compare(
            "engine.listen_backlog",
            self.listen_backlog.to_string(),
            new.listen_backlog.to_string(),
        );
        compare(
            "xdp.interfaces",
            format!("{:?}", self.xdp_interfaces),
            format!("{:?}", new.xdp_interfaces),
        );
        compare(
            "xdp.attach",
            self.xdp_attach.to_string(),
            new.xdp_attach.to_string(),
        );
        out
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
    /// The settings only a restart changes, as started.
    at_start: RestartSettings,
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
        Self::start_with(config, plan, path, Arc::new(Stats::default())).await
    }

    /// Starts everything `plan` (loaded from `config`) names, counting into `stats` (which
    /// an admin server may already serve: it is marked ready at the end).
    pub async fn start_with(
        config: PathBuf,
        mut plan: Plan,
        path: DataPath,
        stats: Arc<Stats>,
    ) -> Result<Self> {
        // Host names first: a destination whose name does not resolve starts down.
        resolve_destinations(&mut plan, None, &stats, |_| true).await;
        let choice = choose(
            path,
            crate::xdp::built_with_xdp(),
            plan.xdp.interfaces.len(),
        );
        if let Choice::Fail(why) = &choice {
            bail!("{why}");
        }
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
            at_start: RestartSettings::of(&plan),
        };
        d.stats
            .set_health(Some(Arc::new(EngineHealth(d.engine.clone()))));
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
        d.stats.set_phase(Phase::Ready);
        Ok(d)
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
    /// a new engine swapped in atomically, the kernel tables, then the listeners it dropped
    /// are stopped.
    async fn install(&mut self, plan: Plan) -> Result<()> {
        let wanted = WantedListeners::of(&plan);
        let started = self.bind_new_listeners(&plan, &wanted).await?;
        let outputs = self.build_outputs(&plan);
        self.swap_engine(&plan, outputs.destinations);
        self.prune_stats(&plan);
        // `[admin] tap` applies to taps opened from now on (open ones run their course).
        self.stats.tap.set_enabled(plan.admin_tap);
        self.install_kernel(&plan);
        // Sinks of destinations that are gone: the old engine may still hold them for a
        // batch; they finish what is queued and stop when the last handle is dropped.
        self.sinks = outputs.sinks;
        self.retire_old_listeners(started, &wanted);
        Ok(())
    }

    /// Binds the listeners `plan` adds, all or none: on an error the ones already bound are
    /// stopped, so the running configuration is left as it was.
    async fn bind_new_listeners(
        &self,
        plan: &Plan,
        wanted: &WantedListeners,
    ) -> Result<StartedListeners> {
        let udp = bind_missing(&self.udp, &wanted.udp, &plan.engine, &self.engine).await?;
        let tcp = match bind_missing(&self.tcp, &wanted.tcp, &plan.engine, &self.engine).await {
            Ok(tcp) => tcp,
            Err(e) => {
                UdpListener::stop_all(udp.into_values().collect()).await;
                return Err(e);
            }
        };
        Ok(StartedListeners { udp, tcp })
    }

    /// The destinations of `plan` with their counters and, for TCP, their sinks: a sink
    /// whose [`SinkKey`] is unchanged is taken over from the running configuration (its
    /// connection and queue kept), the others are spawned.
    fn build_outputs(&mut self, plan: &Plan) -> Outputs {
        let handle = tokio::runtime::Handle::current();
        let mut sinks = HashMap::new();
        let mut destinations = Vec::new();
        for d in &plan.destinations {
            let stats = self.stats.destination(&d.name);
            let queue: Option<Arc<dyn FrameQueue>> = match d.transport {
                Transport::Udp => {
                    // Reachable until an ICMP error says otherwise; a destination in its
                    // hold-down keeps its state across a reload (the flusher restores it).
                    use std::sync::atomic::Ordering::Relaxed;
                    if !d.resolved() {
                        stats.connected.store(false, Relaxed);
                    } else if stats.last_error_ms.load(Relaxed) == 0 {
                        stats.connected.store(true, Relaxed);
                    }
                    None
                }
                Transport::Tcp => {
                    let key = SinkKey::of(d);
                    let tls = d.tls.as_ref().map(|t| SinkTls {
                        config: t.config.clone(),
                        server_name: t.server_name.clone(),
                    });
                    let sink = match self.sinks.remove(&key) {
                        Some(s) => {
                            s.set_address(d.address);
                            if let Some(tls) = tls {
                                // Re-read files: the next connection uses them.
                                s.set_tls(tls);
                            }
                            s
                        }
                        None => TcpSink::spawn_tls(
                            d.name.clone(),
                            d.address,
                            key.options.clone(),
                            tls,
                            stats.clone(),
                            &handle,
                        ),
                    };
                    sinks.insert(key, sink.clone());
                    Some(Arc::new(sink))
                }
            };
            destinations.push(DestinationHandle {
                plan: d.clone(),
                stats,
                queue,
            });
        }
        Outputs {
            sinks,
            destinations,
        }
    }

    /// Swaps in, atomically, a new engine (the next generation) running `plan` with
    /// `destinations`.
    fn swap_engine(&mut self, plan: &Plan, destinations: Vec<DestinationHandle>) {
        self.generation += 1;
        let engine = Engine::new(
            plan.clone(),
            self.generation,
            destinations,
            self.stats.clone(),
            self.epoch,
        );
        self.engine.store(Arc::new(engine));
    }

    /// Drops the counters of the listeners, routes and destinations `plan` no longer names
    /// (their series leave `/metrics`); the ones it keeps keep counting. The engine just
    /// swapped out may still count a batch into a dropped entry: that count is not shown.
    fn prune_stats(&self, plan: &Plan) {
        let listeners: Vec<&str> = plan.listeners.iter().map(|l| l.name.as_str()).collect();
        let routes: Vec<&str> = plan
            .routes
            .iter()
            .chain(plan.default.as_ref())
            .map(|r| r.name.as_str())
            .collect();
        let destinations: Vec<&str> = plan.destinations.iter().map(|d| d.name.as_str()).collect();
        self.stats.retain(&listeners, &routes, &destinations);
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

    /// Adds the listeners just `started`, then stops the ones the new plan no longer
    /// names (`wanted` lacks them).
    fn retire_old_listeners(&mut self, started: StartedListeners, wanted: &WantedListeners) {
        self.udp.extend(started.udp);
        self.tcp.extend(started.tcp);
        retire_unwanted(&mut self.udp, &wanted.udp);
        retire_unwanted(&mut self.tcp, &wanted.tcp);
    }

    /// The bound addresses.
    pub fn bound(&self) -> Bound {
        Bound {
            udp: bound_addresses(&self.udp),
            tcp: bound_addresses(&self.tcp),
        }
    }

    /// The data path and the listeners, for `STATUS=` (`userspace: 1 UDP listener`,
    /// `xdp on eth0: 2 UDP listeners, 1 TCP listener`).
    pub fn status(&self) -> String {
        let path = match &self.dataplane {
            None => "userspace".to_string(),
            Some(dp) => {
                let dp = match dp.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                format!("xdp on {}", dp.interfaces().join(", "))
            }
        };
        let count = |n: usize, transport: &str| {
            format!("{n} {transport} listener{}", if n == 1 { "" } else { "s" })
        };
        let listeners: Vec<String> = [(self.udp.len(), "UDP"), (self.tcp.len(), "TCP")]
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, t)| count(n, t))
            .collect();
        if listeners.is_empty() {
            format!("{path}: no listeners")
        } else {
            format!("{path}: {}", listeners.join(", "))
        }
    }

    /// Resolves the running configuration's host names again (`all`, or only those of
    /// destinations that are down) and, when one now means another address, re-installs
    /// the configuration with it: new sockets and sinks for that destination, new kernel
    /// tables.
    pub async fn re_resolve(&mut self, all: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let running = self.engine.load().plan.clone();
        if running.destinations.iter().all(|d| d.host.is_none()) {
            return;
        }
        let mut plan = running.clone();
        let stats = self.stats.clone();
        resolve_destinations(&mut plan, Some(&running), &stats, |d| {
            all || !stats.destination(&d.name).connected.load(Relaxed)
        })
        .await;
        let mut changed = false;
        for (new, old) in plan.destinations.iter().zip(&running.destinations) {
            if new.address != old.address {
                changed = true;
                tracing::info!(
                    destination = %new.name,
                    host = %new.configured_address(),
                    from = %old.address,
                    to = %new.address,
                    "a host name resolves to a new address: re-installing"
                );
            }
        }
        if changed && let Err(e) = self.install(plan).await {
            tracing::error!(error = %e, "re-installing with the new addresses failed; the running configuration stays");
        }
    }

    /// Re-reads the configuration; on any error keeps the running one.
    ///
    /// The file is read on a blocking thread, and only if it is a regular file of bounded
    /// size opened without blocking ([`crate::config::file`]): a FIFO or a device put in
    /// its place cannot stall the signal loop.
    pub async fn reload(&mut self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let path = self.config.clone();
        let loaded = tokio::task::spawn_blocking(move || crate::config::load(&path)).await;
        let plan = match loaded {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                self.stats.global.reloads_failed.fetch_add(1, Relaxed);
                tracing::error!("reload rejected, the running configuration stays:\n{e}");
                return false;
            }
            Err(e) => {
                self.stats.global.reloads_failed.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "reload rejected (reading the configuration failed), the running configuration stays");
                return false;
            }
        };
        let mut plan = plan;
        let running = self.engine.load().plan.clone();
        resolve_destinations(&mut plan, Some(&running), &self.stats, |_| true).await;
        let changes = self.at_start.changes(&RestartSettings::of(&plan));
        match self.install(plan).await {
            Ok(()) => {
                for (setting, running, configured) in changes {
                    tracing::warn!(
                        %setting,
                        %running,
                        %configured,
                        "the reload does not apply this setting: it needs a restart"
                    );
                }
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
        self.stats.set_phase(Phase::Stopping);
        let drain = self.engine.load().plan.engine.drain_timeout;
        UdpListener::stop_all(self.udp.drain().map(|(_, l)| l).collect()).await;
        TcpListener::stop_all(self.tcp.drain().map(|(_, l)| l).collect()).await;
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

/// `/healthz`'s view of the running engine's destinations.
struct EngineHealth(Arc<ArcSwap<Engine>>);

impl std::fmt::Debug for EngineHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHealth")
            .field("generation", &self.0.load().generation)
            .finish()
    }
}

impl HealthSource for EngineHealth {
    fn destinations(&self) -> Vec<DestinationHealth> {
        use std::sync::atomic::Ordering::Relaxed;
        let engine = self.0.load();
        let now = engine.clock_ms();
        engine
            .destinations
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let last = d.stats.last_error_ms.load(Relaxed);
                let udp = d.plan.transport == Transport::Udp;
                let transport = match (udp, d.plan.tls.is_some()) {
                    (true, _) => "udp",
                    (false, true) => "tls",
                    (false, false) => "tcp",
                };
                DestinationHealth {
                    name: d.plan.name.clone(),
                    transport,
                    up: engine.healthy(i),
                    since_error_ms: (udp && last != 0).then(|| now.saturating_sub(last)),
                    stats: d.stats.clone(),
                }
            })
            .collect()
    }
}

/// The outputs of a plan being installed.
struct Outputs {
    /// Its TCP sinks, by key.
    sinks: HashMap<SinkKey, TcpSink>,
    /// The engine's handles of its destinations, in configuration order.
    destinations: Vec<DestinationHandle>,
}

/// The listener addresses a plan names, by transport.
struct WantedListeners {
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
}

impl WantedListeners {
    fn of(plan: &Plan) -> Self {
        WantedListeners {
            udp: plan.listeners.iter().filter_map(|l| l.udp).collect(),
            // A `tls` address is a TCP listener that does the handshake first.
            tcp: plan
                .listeners
                .iter()
                .flat_map(|l| [l.tcp, l.tls])
                .flatten()
                .collect(),
        }
    }
}

/// Listeners bound for a plan being installed, by configured address; not yet part of the
/// running configuration.
struct StartedListeners {
    udp: HashMap<SocketAddr, UdpListener>,
    tcp: HashMap<SocketAddr, TcpListener>,
}

/// What the daemon does with a listener, whatever its transport: start it, read where it
/// bound, stop it.
trait Listener: Sized + Send + 'static {
    /// The transport, as logs and errors name it (`UDP`, `TCP`).
    const TRANSPORT: &'static str;

    /// Starts listening on `addr` (configured), with `tuning`, feeding `engine`; logs where
    /// it bound.
    async fn start(
        addr: SocketAddr,
        tuning: &EngineTuning,
        engine: &Arc<ArcSwap<Engine>>,
    ) -> std::io::Result<Self>;

    /// The address it bound (port resolved).
    fn bound(&self) -> SocketAddr;

    /// Stops it without waiting (a reload dropped it).
    fn retire(self);

    /// Stops every one of `listeners` and waits until they have stopped.
    async fn stop_all(listeners: Vec<Self>);
}

impl Listener for UdpListener {
    const TRANSPORT: &'static str = "UDP";

    async fn start(
        addr: SocketAddr,
        tuning: &EngineTuning,
        engine: &Arc<ArcSwap<Engine>>,
    ) -> std::io::Result<Self> {
        let l = UdpListener::start(
            addr,
            tuning.workers,
            tuning.batch,
            tuning.recv_buffer,
            engine.clone(),
        )?;
        tracing::info!(configured = %addr, bound = %l.addr, workers = tuning.workers, "listening on UDP");
        Ok(l)
    }

    fn bound(&self) -> SocketAddr {
        self.addr
    }

    fn retire(self) {
        // Stopping joins the worker threads: not on the runtime's threads.
        tokio::task::spawn_blocking(move || self.stop());
    }

    async fn stop_all(listeners: Vec<Self>) {
        let _ =
            tokio::task::spawn_blocking(move || listeners.into_iter().for_each(UdpListener::stop))
                .await;
    }
}

impl Listener for TcpListener {
    const TRANSPORT: &'static str = "TCP";

    async fn start(
        addr: SocketAddr,
        tuning: &EngineTuning,
        engine: &Arc<ArcSwap<Engine>>,
    ) -> std::io::Result<Self> {
        let l = TcpListener::start(addr, tuning.listen_backlog, engine.clone())?;
        tracing::info!(configured = %addr, bound = %l.addr, backlog = tuning.listen_backlog, "listening on TCP");
        Ok(l)
    }

    fn bound(&self) -> SocketAddr {
        self.addr
    }

    fn retire(self) {
        self.stop();
    }

    async fn stop_all(listeners: Vec<Self>) {
        listeners.into_iter().for_each(TcpListener::stop);
    }
}

/// Starts a listener on every address of `wanted` that `running` lacks, all or none: on an
/// error the ones started here are stopped before it is returned.
async fn bind_missing<L: Listener>(
    running: &HashMap<SocketAddr, L>,
    wanted: &[SocketAddr],
    tuning: &EngineTuning,
    engine: &Arc<ArcSwap<Engine>>,
) -> Result<HashMap<SocketAddr, L>> {
    let mut started = HashMap::new();
    for a in wanted.iter().filter(|a| !running.contains_key(*a)) {
        match L::start(*a, tuning, engine).await {
            Ok(l) => {
                started.insert(*a, l);
            }
            Err(e) => {
                L::stop_all(started.into_values().collect()).await;
                return Err(
                    anyhow::Error::new(e).context(format!("listening on {} {a}", L::TRANSPORT))
                );
            }
        }
    }
    Ok(started)
}

/// Stops (without waiting) the listeners of `running` that `wanted` no longer names.
fn retire_unwanted<L: Listener>(running: &mut HashMap<SocketAddr, L>, wanted: &[SocketAddr]) {
    let gone: Vec<SocketAddr> = running
        .keys()
        .filter(|a| !wanted.contains(a))
        .copied()
        .collect();
    for a in gone {
        if let Some(l) = running.remove(&a) {
            l.retire();
            tracing::info!(%a, "stopped listening on {}", L::TRANSPORT);
        }
    }
}

/// Configured address → bound address of every listener in `running`.
fn bound_addresses<L: Listener>(running: &HashMap<SocketAddr, L>) -> Vec<(SocketAddr, SocketAddr)> {
    running.iter().map(|(c, l)| (*c, l.bound())).collect()
}

/// Runs the daemon until SIGTERM or SIGINT, telling the service manager (`notify`) when
/// it is ready, reloading and stopping.
pub async fn run(config: PathBuf, path: DataPath, notify: Notifier) -> Result<()> {
    // The handlers first: a signal that arrives while the daemon starts (XDP can take a
    // while) is handled once it has started, instead of killing it.
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    crate::io::accept::raise_nofile_limit();
    let plan = crate::config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stats = Arc::new(Stats::default());
    // The admin server first: `/readyz` answers 503 until everything below has started.
    if let Some(addr) = plan.admin {
        let (local, serve) = crate::admin::bind(addr, stats.clone()).await?;
        tracing::info!(%local, "admin server: /metrics, /healthz, /readyz");
        tokio::spawn(serve);
    }
    let mut d = Daemon::start_with(config, plan, path, stats).await?;
    tracing::info!("running");
    notify.ready(&d.status());
    let mut resolve_tick = tokio::time::interval(std::time::Duration::from_secs(1));
    resolve_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_full_resolve = Instant::now();
    loop {
        tokio::select! {
            _ = hup.recv() => {
                notify.reloading();
                d.reload().await;
                notify.ready(&d.status());
            }
            _ = resolve_tick.tick() => {
                // Every second the names of destinations that are down, every
                // `resolve_interval` all of them.
                let interval = d.engine.load().plan.resolver.interval;
                let all = last_full_resolve.elapsed() >= interval;
                if all {
                    last_full_resolve = Instant::now();
                }
                d.re_resolve(all).await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping");
    notify.stopping();
    d.shutdown().await;
    Ok(())
}

/// Resolves the host names of `plan`'s destinations for which `which` says so (each name
/// starts from the address `running` had for it); a lookup that fails keeps that address
/// (or leaves the destination unresolved, hence down), logged and counted. The lookups run
/// at once, each bounded by [`crate::resolve::LOOKUP_TIMEOUT`].
async fn resolve_destinations(
    plan: &mut Plan,
    running: Option<&Plan>,
    stats: &Stats,
    which: impl Fn(&DestinationPlan) -> bool,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let resolver = plan.resolver.resolver.clone();
    let mut lookups = Vec::new();
    for (i, d) in plan.destinations.iter_mut().enumerate() {
        let Some(host) = d.host.clone() else { continue };
        if let Some(previous) = running.and_then(|r| {
            r.destinations
                .iter()
                .find(|x| x.name == d.name && x.host == d.host)
        }) {
            d.address = previous.address;
        }
        if which(d) {
            let resolver = resolver.clone();
            lookups.push(async move { (i, resolver.resolve(&host).await) });
        }
    }
    for (i, result) in futures_util::future::join_all(lookups).await {
        let Some(d) = plan.destinations.get_mut(i) else {
            continue;
        };
        match result {
            Ok(a) => d.address = a,
            Err(e) => {
                stats
                    .destination(&d.name)
                    .resolve_failures
                    .fetch_add(1, Relaxed);
                if d.resolved() {
                    tracing::warn!(destination = %d.name, error = %e, keeping = %d.address, "host name lookup failed; the last address stays");
                } else {
                    tracing::warn!(destination = %d.name, error = %e, "host name lookup failed; the destination is down until it resolves");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_settings_name_each_change_with_both_values() {
        let at_start = RestartSettings {
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9100))),
            workers: 1,
            batch: 32,
            recv_buffer: 4096,
            listen_backlog: 1024,
            xdp_interfaces: vec!["eth0".into()],
            xdp_attach: "native",
        };
        assert!(at_start.changes(&at_start.clone()).is_empty());
        let new = RestartSettings {
            admin: None,
            workers: 2,
            xdp_attach: "skb",
            ..at_start.clone()
        };
        let names: Vec<(&str, String, String)> = at_start.changes(&new);
        assert_eq!(
            names,
            [
                ("admin.listen", "127.0.0.1:9100".into(), "none".into()),
                ("engine.workers", "1".into(), "2".into()),
                ("xdp.attach", "native".into(), "skb".into()),
            ]
        );
    }
}
