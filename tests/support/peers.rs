//! Real peers (Kamailio, sipp, …) in integration tests: tool discovery, loopback port
//! picking, per-test directories and process guards that stop exactly the processes the
//! test started, also when the test fails.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};

/// What to tell the user when a peer program is missing.
pub const SETUP_HINT: &str = "run `cargo xtask setup` (it installs kamailio and sipp)";

/// Directories searched after `$PATH`: daemons such as kamailio live in `sbin`, which is
/// often not in a non-root `$PATH`.
const EXTRA_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

fn is_executable(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Finds the program `name`: `$<env_override>` if set (it must then point to an
/// executable), else `$PATH`, else the usual `bin`/`sbin` directories. The error names
/// `cargo xtask setup`.
pub fn find_tool(name: &str, env_override: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_override).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if is_executable(&p) {
            return Ok(p);
        }
        bail!(
            "${env_override}={} is not an executable file; unset it or {SETUP_HINT}",
            p.display()
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(EXTRA_DIRS.iter().map(PathBuf::from));
    for dir in dirs {
        let cand = dir.join(name);
        if is_executable(&cand) {
            return Ok(cand);
        }
    }
    bail!(
        "`{name}` not found in $PATH or {} (or set ${env_override}); {SETUP_HINT}",
        EXTRA_DIRS.join(", ")
    )
}

/// The Kamailio binary (`$KAMAILIO_BIN` overrides).
pub fn kamailio() -> Result<PathBuf> {
    find_tool("kamailio", "KAMAILIO_BIN")
}

/// The sipp binary (`$SIPP_BIN` overrides).
pub fn sipp() -> Result<PathBuf> {
    find_tool("sipp", "SIPP_BIN")
}

/// `n` distinct UDP ports that were free on `ip` a moment ago: all are bound at once to
/// port 0 (so the kernel picks distinct random ephemeral ports), then released for the
/// peer to bind. Another process may grab one in between; callers that start a peer on
/// them should retry with fresh ports if it fails to bind.
pub fn pick_udp_ports(ip: Ipv4Addr, n: usize) -> Result<Vec<u16>> {
    let mut socks = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n {
        let s = UdpSocket::bind((ip, 0)).with_context(|| format!("bind {ip}:0"))?;
        let port = s.local_addr().context("local_addr")?.port();
        ports.push(port);
        socks.push(s);
    }
    drop(socks);
    Ok(ports)
}

/// The UDP sockets bound on this host, as (local IP, local port), from `/proc/net/udp`.
/// Reading it does not disturb the peer (unlike a trial bind).
pub fn udp_bound_v4() -> Result<BTreeSet<(Ipv4Addr, u16)>> {
    let text = fs::read_to_string("/proc/net/udp").context("read /proc/net/udp")?;
    let mut out = BTreeSet::new();
    for line in text.lines().skip(1) {
        // "  sl  local_address rem_address   st ..." ; local_address is "0100007F:3AD4":
        // the address is the in-memory (network order) u32 printed as a host integer,
        // the port is printed in host order.
        let Some(local) = line.split_whitespace().nth(1) else {
            continue;
        };
        let Some((addr_hex, port_hex)) = local.split_once(':') else {
            continue;
        };
        let (Ok(addr), Ok(port)) = (
            u32::from_str_radix(addr_hex, 16),
            u16::from_str_radix(port_hex, 16),
        ) else {
            continue;
        };
        out.insert((Ipv4Addr::from(addr.to_ne_bytes()), port));
    }
    Ok(out)
}

/// Whether some socket is bound to UDP `ip:port` (or to the wildcard address on `port`).
pub fn udp_port_bound(ip: Ipv4Addr, port: u16) -> Result<bool> {
    let bound = udp_bound_v4()?;
    Ok(bound.contains(&(ip, port)) || bound.contains(&(Ipv4Addr::UNSPECIFIED, port)))
}

/// Polls `cond` every 50 ms until it returns `Ok(true)` or `timeout` passes (then an
/// error naming `what`). Errors from `cond` end the wait.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

static DIR_SEQ: AtomicU64 = AtomicU64::new(0);

/// A per-test scratch directory under the system temp dir. Removed on drop when the test
/// passes; kept (and its path printed) when the thread is panicking, so logs survive a
/// failure. Set `HEPFWD_KEEP_TEST_DIRS=1` to always keep it.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(prefix: &str) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let seq = DIR_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "hepfwd-{prefix}-{}-{seq}-{nanos:x}",
            std::process::id()
        ));
        fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let keep = std::env::var_os("HEPFWD_KEEP_TEST_DIRS").is_some_and(|v| v != "0");
        if std::thread::panicking() || keep {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Reads a (log) file for a failure message: at most the last `max` bytes, lossily.
pub fn read_tail(path: &Path, max: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            let mut s = String::from_utf8_lossy(&bytes[start..]).into_owned();
            if start > 0 {
                s.insert_str(0, &format!("[… {start} bytes cut …]\n"));
            }
            s
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// A child process started in its own process group, with stdout and stderr going to
/// files. Dropping the guard stops it: SIGTERM to every live process of that group (the
/// child and whatever it forked, e.g. Kamailio's workers), each by PID, then SIGKILL
/// after a grace period. Nothing outside the group is ever signalled.
pub struct ProcessGuard {
    name: String,
    child: Child,
    pgid: u32,
    status: Option<ExitStatus>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl ProcessGuard {
    /// Spawns `cmd` (stdin from /dev/null) in a new process group.
    pub fn spawn(name: &str, cmd: Command, stdout: &Path, stderr: &Path) -> Result<Self> {
        Self::spawn_with_stdin(name, cmd, Stdio::null(), stdout, stderr)
    }

    /// Like [`ProcessGuard::spawn`] with the given stdin (e.g. a `File`).
    pub fn spawn_with_stdin(
        name: &str,
        mut cmd: Command,
        stdin: impl Into<Stdio>,
        stdout: &Path,
        stderr: &Path,
    ) -> Result<Self> {
        let out = File::create(stdout).with_context(|| format!("create {}", stdout.display()))?;
        let err = File::create(stderr).with_context(|| format!("create {}", stderr.display()))?;
        cmd.stdin(stdin).stdout(out).stderr(err).process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {name}: {cmd:?}"))?;
        let pgid = child.id();
        Ok(Self {
            name: name.to_owned(),
            child,
            pgid,
            status: None,
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pgid
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// The exit status if the (leader) process has exited; does not block.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("wait for {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the whole process group: SIGTERM, up to `grace` to exit, then SIGKILL.
    /// Returns the leader's exit status.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        signal_pids(&live_group_members(self.pgid), "TERM");
        let deadline = Instant::now() + grace;
        loop {
            let leader_done = self.try_wait()?.is_some();
            if leader_done && live_group_members(self.pgid).is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                signal_pids(&live_group_members(self.pgid), "KILL");
                if !leader_done {
                    // In case /proc or kill(1) are unavailable: SIGKILL the leader itself.
                    let _ = self.child.kill();
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match self.wait_timeout(Duration::from_secs(5))? {
            Some(st) => Ok(st),
            None => Err(anyhow!("{} (pid {}) did not exit", self.name, self.pgid)),
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if let Err(e) = self.terminate(Duration::from_secs(5)) {
            eprintln!("stopping {}: {e:#}", self.name);
        }
    }
}

/// PIDs of the non-zombie processes whose process group is `pgid`, from `/proc`.
fn live_group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp …"; comm may contain spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|s| s.parse::<u32>().ok());
        if pgrp == Some(pgid) && state != Some("Z") {
            pids.push(pid);
        }
    }
    pids
}

/// Sends `SIG<sig>` to each PID with kill(1) (std has no signal API but SIGKILL of a
/// direct child). Failures are ignored: the process may have exited meanwhile.
fn signal_pids(pids: &[u32], sig: &str) {
    if pids.is_empty() {
        return;
    }
    let mut cmd = Command::new("kill");
    cmd.arg("-s").arg(sig).arg("--");
    for pid in pids {
        cmd.arg(pid.to_string());
    }
    let _ = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
