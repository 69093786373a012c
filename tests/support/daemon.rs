//! A `hepfwd run --mode userspace` daemon under test: its configuration in a temp dir,
//! free loopback ports, readiness through `/readyz`, signals to exactly its PID, counters
//! from `/metrics`. Dropping the guard stops it; a failing test prints its stderr.
//!
//! [`Daemon::start_in_netns`] runs it in a network namespace instead (any `--mode`), with
//! its admin server on 127.0.0.1 inside the namespace, reached from a thread that entered
//! it; the rest of the API is the same.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::hepfwd::hepfwd_bin;
use crate::metrics::{Metrics, http_get};
use crate::netns::try_in_netns;
use crate::peers::{ProcessGuard, TestDir, read_tail};

/// The IPv4 loopback address.
pub const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// How long the daemon may take to answer 200 on `/readyz` after its start.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

static HANDED_OUT: Mutex<BTreeSet<(IpAddr, u16)>> = Mutex::new(BTreeSet::new());

/// A port on `ip` that was free for both UDP and TCP a moment ago and that this test
/// process has not handed out before (so parallel tests do not collide with each other;
/// another process may still take it, which [`Daemon::start`] survives by retrying).
pub fn free_port(ip: IpAddr) -> u16 {
    let mut handed = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..200 {
        let Ok(u) = UdpSocket::bind((ip, 0)) else {
            continue;
        };
        let Ok(port) = u.local_addr().map(|a| a.port()) else {
            continue;
        };
        if handed.contains(&(ip, port)) || TcpListener::bind((ip, port)).is_err() {
            continue;
        }
        handed.insert((ip, port));
        return port;
    }
    panic!("no free port on {ip}");
}

/// A port free on 127.0.0.1.
pub fn free_port_v4() -> u16 {
    free_port(IpAddr::V4(LO))
}

/// Ports chosen for one start of the daemon (chosen again if the start fails on a port
/// another process took).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The main listener port (free on 127.0.0.1 for UDP and TCP).
    pub listen: u16,
    /// A second listener port (free on 127.0.0.1 for UDP and TCP).
    pub listen2: u16,
    /// A listener port free on [::1] (UDP and TCP).
    pub listen6: u16,
    /// The admin server port.
    pub admin: u16,
}

impl Ports {
    fn pick() -> Self {
        Ports {
            listen: free_port_v4(),
            listen2: free_port_v4(),
            listen6: free_port(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
            admin: free_port_v4(),
        }
    }

    /// `127.0.0.1:listen`.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::from((LO, self.listen))
    }
}

/// The data path of `hepfwd run --mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `--mode auto`.
    Auto,
    /// `--mode userspace`.
    Userspace,
    /// `--mode xdp`.
    Xdp,
}

impl Mode {
    /// The `--mode` argument.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Userspace => "userspace",
            Mode::Xdp => "xdp",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How [`Daemon::start_with`] starts the process.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// RLIMIT_NOFILE `(soft, hard)` of the daemon (`None`: the test's own).
    pub nofile: Option<(u64, u64)>,
    /// Environment variables set for the daemon (on top of the test's own).
    pub env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

/// Makes `cmd`'s process start with RLIMIT_NOFILE `(soft, hard)`.
fn set_nofile_at_exec(cmd: &mut Command, soft: u64, hard: u64) {
    use std::os::unix::process::CommandExt as _;
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // setrlimit(2), which is async-signal-safe, on a value it owns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// A running daemon.
pub struct Daemon {
    proc: Option<ProcessGuard>,
    dir: TestDir,
    config: PathBuf,
    /// The ports it was started with.
    pub ports: Ports,
    /// Its admin server.
    pub admin: SocketAddr,
    /// The network namespace it runs in (`None`: the test's own).
    netns: Option<String>,
    status: Option<ExitStatus>,
}

/// `GET path` on the admin server `admin`, from inside `netns` when given.
fn admin_get(netns: Option<&str>, admin: SocketAddr, path: &str) -> Result<(u16, String)> {
    match netns {
        None => http_get(admin, path),
        Some(ns) => try_in_netns(ns, || http_get(admin, path)),
    }
}

fn wait_ready(p: &mut ProcessGuard, netns: Option<&str>, admin: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(st) = p.try_wait()? {
            bail!("hepfwd exited during start: {st}");
        }
        match admin_get(netns, admin, "/readyz") {
            Ok((200, _)) => return Ok(()),
            // A daemon without /readyz: ready once /healthz answers.
            Ok((404, _)) => {
                if let Ok((200, body)) = admin_get(netns, admin, "/healthz") {
                    let v: serde_json::Value =
                        serde_json::from_str(&body).context("/healthz is not JSON")?;
                    if v["status"] != "ok" {
                        bail!("/healthz says {body}");
                    }
                    return Ok(());
                }
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            bail!("/readyz did not answer 200 within {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `[admin]` section pointing at `port`, appended when a configuration has none.
fn with_admin(config: &str, port: u16) -> String {
    if config.contains("[admin]") {
        config.to_string()
    } else {
        format!("{config}\n[admin]\nlisten = \"127.0.0.1:{port}\"\n")
    }
}

impl Daemon {
    /// Writes the configuration `config(ports)` (an `[admin]` section on `ports.admin` is
    /// appended when it has none), starts the daemon and waits until `/readyz` answers 200.
    /// Panics with the daemon's stderr when it does not come up.
    pub fn start(name: &str, config: impl Fn(&Ports) -> String) -> Daemon {
        Self::try_start(name, config).unwrap_or_else(|e| panic!("starting hepfwd: {e:#}"))
    }

    /// Like [`Daemon::start`], returning the error.
    pub fn try_start(name: &str, config: impl Fn(&Ports) -> String) -> Result<Daemon> {
        Self::try_start_with(name, &StartOptions::default(), config)
    }

    /// Like [`Daemon::start`], with `options` (limits of the process).
    pub fn start_with(
        name: &str,
        options: &StartOptions,
        config: impl Fn(&Ports) -> String,
    ) -> Daemon {
        Self::try_start_with(name, options, config)
            .unwrap_or_else(|e| panic!("starting hepfwd: {e:#}"))
    }

    /// Like [`Daemon::start_with`], returning the error.
    pub fn try_start_with(
        name: &str,
        options: &StartOptions,
        config: impl Fn(&Ports) -> String,
    ) -> Result<Daemon> {
        let bin = hepfwd_bin()?;
        let dir = TestDir::new(name)?;
        let cfg_path = dir.join("hepfwd.toml");
        let mut last_err = anyhow::anyhow!("hepfwd did not start");
        for attempt in 0..4 {
            let ports = Ports::pick();
            let text = with_admin(&config(&ports), ports.admin);
            std::fs::write(&cfg_path, &text)
                .with_context(|| format!("write {}", cfg_path.display()))?;
            let stderr = dir.join(&format!("hepfwd-{attempt}.stderr"));
            let stdout = dir.join(&format!("hepfwd-{attempt}.stdout"));
            let mut cmd = Command::new(&bin);
            cmd.args(["--log", "info", "run", "--mode", "userspace", "--config"])
                .arg(&cfg_path);
            if let Some((soft, hard)) = options.nofile {
                set_nofile_at_exec(&mut cmd, soft, hard);
            }
            cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
            let mut guard = ProcessGuard::spawn("hepfwd", cmd, &stdout, &stderr)?;
            let admin = SocketAddr::from((LO, ports.admin));
            match wait_ready(&mut guard, None, admin) {
                Ok(()) => {
                    return Ok(Daemon {
                        proc: Some(guard),
                        dir,
                        config: cfg_path,
                        ports,
                        admin,
                        netns: None,
                        status: None,
                    });
                }
                Err(e) => {
                    drop(guard);
                    let log = read_tail(&stderr, 64 * 1024);
                    // Another process took one of the ports between the pick and the bind.
                    let retry = log.contains("Address already in use");
                    last_err = e.context(format!("hepfwd stderr:\n{log}"));
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(last_err)
    }

    /// Starts `ip netns exec NETNS hepfwd run --mode MODE` on `config` (an `[admin]`
    /// section on 127.0.0.1:9100 is appended when it has none: the namespace is the test's
    /// own, so fixed ports are free) and waits until `/readyz` answers 200 from inside the
    /// namespace. The error carries the daemon's stderr.
    pub fn start_in_netns(netns: &str, mode: Mode, config: &str) -> Result<Daemon> {
        let bin = hepfwd_bin()?;
        let dir = TestDir::new(&format!("{netns}-{mode}"))?;
        let cfg_path = dir.join("hepfwd.toml");
        let ports = Ports {
            listen: 9060,
            listen2: 0,
            listen6: 0,
            admin: 9100,
        };
        std::fs::write(&cfg_path, with_admin(config, ports.admin))
            .with_context(|| format!("write {}", cfg_path.display()))?;
        let admin = admin_of(config).unwrap_or(SocketAddr::from((LO, ports.admin)));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .arg(&bin)
            .args(["--log", "info", "run", "--mode", mode.as_str(), "--config"])
            .arg(&cfg_path);
        let (stdout, stderr) = (dir.join("hepfwd.stdout"), dir.join("hepfwd.stderr"));
        // `ip netns exec` execs the program: the guard's PID is hepfwd's.
        let mut guard = ProcessGuard::spawn("hepfwd", cmd, &stdout, &stderr)?;
        if let Err(e) = wait_ready(&mut guard, Some(netns), admin) {
            drop(guard);
            return Err(e.context(format!(
                "hepfwd --mode {mode} in netns {netns}, stderr:\n{}",
                read_tail(&stderr, 64 * 1024)
            )));
        }
        Ok(Daemon {
            proc: Some(guard),
            dir,
            config: cfg_path,
            ports,
            admin,
            netns: Some(netns.to_string()),
            status: None,
        })
    }

    fn proc_mut(&mut self) -> &mut ProcessGuard {
        self.proc.as_mut().expect("the daemon process")
    }

    /// The daemon's PID.
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, ProcessGuard::pid)
    }

    /// The configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The test's scratch directory.
    pub fn dir(&self) -> &TestDir {
        &self.dir
    }

    /// Everything the daemon wrote on stderr so far.
    pub fn stderr(&self) -> String {
        match &self.proc {
            Some(p) => read_tail(p.stderr_path(), 64 * 1024),
            None => String::new(),
        }
    }

    /// `127.0.0.1:ports.listen`.
    pub fn listen(&self) -> SocketAddr {
        self.ports.listen_addr()
    }

    /// Sends `sig` to the daemon's PID (and nothing else).
    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.pid();
        assert!(pid > 0, "no daemon process");
        // SAFETY: kill(2) on the PID of the child this guard spawned and has not reaped.
        let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
        assert_eq!(
            r,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// A scrape of `/metrics` (panics if the daemon does not answer).
    pub fn metrics(&self) -> Metrics {
        self.try_metrics().unwrap_or_else(|e| {
            panic!(
                "scraping /metrics: {e:#}\nhepfwd stderr:\n{}",
                self.stderr()
            )
        })
    }

    /// A scrape of `/metrics`.
    pub fn try_metrics(&self) -> Result<Metrics> {
        let (status, body) = admin_get(self.netns.as_deref(), self.admin, "/metrics")?;
        if status != 200 {
            bail!("GET /metrics answered {status}: {body}");
        }
        Metrics::parse(&body)
    }

    /// One counter (sum of the matching samples, 0 if none).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.metrics().get(name, labels)
    }

    /// Polls a counter (or gauge) until it equals `want`; panics at `timeout` with its last
    /// value, or at once when a counter (`*_total`) went past it.
    pub fn wait_counter(&self, name: &str, labels: &[(&str, &str)], want: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.counter(name, labels);
            if v == want {
                return;
            }
            // A counter past the value will not come back; a gauge may.
            let past = v > want && name.ends_with("_total");
            if past || Instant::now() >= deadline {
                panic!(
                    "{name}{labels:?} is {v}, expected {want} (within {timeout:?})\nhepfwd stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls until `cond(metrics)` holds; panics at `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut(&Metrics) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics();
            if cond(&m) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\nlast metrics:\n{:#?}\nhepfwd stderr:\n{}",
                    m.samples
                        .iter()
                        .filter(|s| s.value != 0.0)
                        .map(|s| format!("{} {:?} {}", s.name, s.labels, s.value))
                        .collect::<Vec<_>>(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `GET path` on the admin server: (status code, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        admin_get(self.netns.as_deref(), self.admin, path)
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}\nhepfwd stderr:\n{}", self.stderr()))
    }

    /// `/healthz`: (status code, the JSON body).
    pub fn health(&self) -> (u16, serde_json::Value) {
        let (status, body) = self.admin_get("/healthz");
        let v = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/healthz is not JSON ({e}): {body}"));
        (status, v)
    }

    /// Packets received by every listener so far (UDP and TCP).
    pub fn received(&self) -> u64 {
        self.counter("hepfwd_received_total", &[])
    }

    /// Writes `config(ports)` (same ports, `[admin]` appended as at start) over the
    /// configuration file, sends SIGHUP and waits until the daemon counted the reload.
    /// Returns whether it was accepted.
    pub fn reload(&self, config: impl Fn(&Ports) -> String) -> bool {
        let text = with_admin(&config(&self.ports), self.ports.admin);
        let m = self.metrics();
        let ok0 = m.get("hepfwd_config_reloads_total", &[("result", "ok")]);
        let err0 = m.get("hepfwd_config_reloads_total", &[("result", "error")]);
        // Write then rename, so the daemon never reads half a file.
        let tmp = self.config.with_extension("toml.new");
        std::fs::write(&tmp, text).expect("write the new configuration");
        std::fs::rename(&tmp, &self.config).expect("replace the configuration");
        self.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = self.metrics();
            let ok = m.get("hepfwd_config_reloads_total", &[("result", "ok")]);
            let err = m.get("hepfwd_config_reloads_total", &[("result", "error")]);
            if ok > ok0 {
                return true;
            }
            if err > err0 {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "the reload was not counted within 10 s\nhepfwd stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `timeout` for the daemon to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .proc_mut()
                .wait_timeout(timeout)
                .expect("waiting for hepfwd");
        }
        self.status
    }

    /// The daemon's resident memory in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        process_rss_kib(self.pid())
    }

    /// How many descriptors the daemon has open (entries of `/proc/PID/fd`).
    pub fn open_fds(&self) -> usize {
        process_open_fds(self.pid())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.proc_mut().try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- hepfwd stderr (config {}) ----\n{}\n---- end of hepfwd stderr ----",
                self.config.display(),
                self.stderr()
            );
        }
        // ProcessGuard's drop stops the process (SIGTERM, then SIGKILL).
        drop(self.proc.take());
    }
}

/// The `listen` address of the `[admin]` section of `config`, if it has one.
fn admin_of(config: &str) -> Option<SocketAddr> {
    let section = config.split("[admin]").nth(1)?;
    let line = section
        .lines()
        .take_while(|l| !l.trim_start().starts_with('['))
        .find(|l| l.trim_start().starts_with("listen"))?;
    line.split('"').nth(1)?.parse().ok()
}

/// `[[destination]]` for a UDP collector.
pub fn udp_destination(name: &str, addr: SocketAddr) -> String {
    format!("\n[[destination]]\nname = \"{name}\"\naddress = \"{addr}\"\ntransport = \"udp\"\n")
}

/// `[[destination]]` for a TCP collector, with an optional queue bound.
pub fn tcp_destination(name: &str, addr: SocketAddr, queue: Option<usize>) -> String {
    let q = queue.map_or(String::new(), |q| format!("queue = {q}\n"));
    format!("\n[[destination]]\nname = \"{name}\"\naddress = \"{addr}\"\ntransport = \"tcp\"\n{q}")
}

/// `[[listener]]` named `agents` on UDP `127.0.0.1:ports.listen`.
pub fn udp_listener(p: &Ports) -> String {
    format!(
        "\n[[listener]]\nname = \"agents\"\nudp = \"127.0.0.1:{}\"\n",
        p.listen
    )
}

/// `[engine]` with one UDP worker (ordering and round-robin counts are exact).
pub const ONE_WORKER: &str = "\n[engine]\nworkers = 1\n";

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn process_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Open descriptors of process `pid` (entries of `/proc/PID/fd`).
pub fn process_open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
        .count()
}

/// Raises this test process's RLIMIT_NOFILE soft limit to at least `want` (up to the hard
/// limit), for tests that hold thousands of sockets. Returns the soft limit now in force.
pub fn raise_nofile_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct we own.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) };
    assert_eq!(r, 0, "getrlimit: {}", std::io::Error::last_os_error());
    if lim.rlim_cur >= want {
        return lim.rlim_cur;
    }
    lim.rlim_cur = want.min(lim.rlim_max);
    // SAFETY: setrlimit reads one rlimit struct we own.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) };
    assert_eq!(r, 0, "setrlimit: {}", std::io::Error::last_os_error());
    lim.rlim_cur
}
