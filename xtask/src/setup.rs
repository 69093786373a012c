//! `cargo xtask setup`: install what building and testing hepfwd needs, idempotently.
//!
//! The steps (`../shared/TOOLCHAIN.md`): Debian packages, Debian's rustc linked as the
//! rustup toolchain `debian-web` (the only compiler here with the library source that
//! `-Z build-std=core` needs), bpf-linker 0.13.0 built against LLVM 22, bpffs mounted on
//! `/sys/fs/bpf`, the npm packages of the hep-js interop test, and cargo-deb (`cargo xtask
//! deb`). Each step prints one
//! line: what it did, or that it was already done.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// Debian packages the build and the tests need.
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "rust-web-clippy",
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "bpftool",
    "iproute2",
    "kamailio",
    "sip-tester",
    "ethtool",
    "prometheus", // promtool: tests/deploy_assets.rs checks deploy/prometheus/hepfwd-alerts.yml
];

/// Of [`APT_PACKAGES`], those installed without their recommended packages.
const WITHOUT_RECOMMENDS: &[&str] = &["prometheus"];

/// The rustup toolchain name of Debian's rustc (`rustup toolchain link debian-web /usr`).
pub const TOOLCHAIN: &str = "debian-web";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-deb, for `cargo xtask deb` (3.8.0 builds with rust 1.95; its MSRV is 1.85).
pub const CARGO_DEB_VERSION: &str = "3.8.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPFFS: &str = "/sys/fs/bpf";
const HEPJS_DIR: &str = "tests/interop/hepjs";

/// Runs every step; fails with the manual steps when something is missing and this is not
/// a Debian/Ubuntu machine or we are not root.
pub fn run() -> Result<()> {
    let root = cmd::workspace_root();
    let state = State::probe(&root);
    let steps = state.steps();
    let (is_root, distro) = (is_root(), debian_like());
    if steps.iter().any(|(done, _)| !done) && (!is_root || distro.is_none()) {
        let why = match (is_root, &distro) {
            (false, None) => "not root, and not a Debian/Ubuntu machine".to_string(),
            (false, Some(_)) => "not root".to_string(),
            (true, _) => "not a Debian/Ubuntu machine (no apt)".to_string(),
        };
        print_manual_steps(&why, &steps);
        bail!("setup cannot install what is missing ({why}); see the steps above");
    }

    step_apt(&state)?;
    step_toolchain(&state)?;
    step_bpf_linker(&state)?;
    step_bpffs(&state)?;
    step_npm(&root, &state)?;
    step_cargo_deb(&state)?;
    Ok(())
}

/// What is already there.
struct State {
    missing_apt: Vec<&'static str>,
    /// `None` when rustup itself is missing.
    toolchain_linked: Option<bool>,
    bpf_linker: Option<String>,
    bpffs_mounted: bool,
    /// `Some(true)` when hep-js needs `npm ci`, `None` when there is no lockfile.
    npm_needed: Option<bool>,
    /// `cargo deb --version`, `None` when not installed.
    cargo_deb: Option<String>,
}

impl State {
    fn probe(root: &Path) -> Self {
        let mut missing_apt: Vec<&'static str> = APT_PACKAGES
            .iter()
            .copied()
            .filter(|p| !dpkg_installed(p))
            .collect();
        // Node only when missing: a machine may have it from elsewhere (nodesource, nvm).
        if !cmd::on_path("node") && !dpkg_installed("nodejs") {
            missing_apt.push("nodejs");
        }
        if !cmd::on_path("npm") && !dpkg_installed("npm") {
            missing_apt.push("npm");
        }
        State {
            missing_apt,
            toolchain_linked: toolchain_linked(),
            bpf_linker: bpf_linker_version(),
            bpffs_mounted: bpffs_mounted(),
            npm_needed: npm_needed(root),
            cargo_deb: cargo_deb_version(),
        }
    }

    fn cargo_deb_ok(&self) -> bool {
        self.cargo_deb
            .as_deref()
            .is_some_and(|v| v.split_whitespace().any(|w| w == CARGO_DEB_VERSION))
    }

    fn bpf_linker_ok(&self) -> bool {
        self.bpf_linker
            .as_deref()
            .is_some_and(|v| v.split_whitespace().any(|w| w == BPF_LINKER_VERSION))
    }

    /// Every step as `(done, manual command)`, in order.
    fn steps(&self) -> Vec<(bool, String)> {
        let apt = if self.missing_apt.is_empty() {
            APT_PACKAGES.join(" ")
        } else {
            self.missing_apt.join(" ")
        };
        vec![
            (
                self.missing_apt.is_empty(),
                format!("sudo apt-get update && sudo apt-get install -y {apt}"),
            ),
            (
                self.toolchain_linked == Some(true),
                match self.toolchain_linked {
                    None => format!(
                        "install rustup (https://rustup.rs), then: rustup toolchain link \
                         {TOOLCHAIN} /usr"
                    ),
                    Some(_) => format!("rustup toolchain link {TOOLCHAIN} /usr"),
                },
            ),
            (
                self.bpf_linker_ok(),
                format!(
                    "PATH={LLVM_PREFIX}/bin:$PATH LLVM_SYS_221_PREFIX={LLVM_PREFIX} cargo install \
                     bpf-linker --version {BPF_LINKER_VERSION} --no-default-features --features \
                     llvm-22"
                ),
            ),
            (self.bpffs_mounted, format!("sudo mount -t bpf bpf {BPFFS}")),
            (
                self.npm_needed != Some(true),
                format!(
                    "(cd {HEPJS_DIR} && npm ci)   # only if {HEPJS_DIR}/package-lock.json exists"
                ),
            ),
            (
                self.cargo_deb_ok(),
                format!("cargo install --locked cargo-deb@{CARGO_DEB_VERSION}"),
            ),
        ]
    }
}

fn print_manual_steps(why: &str, steps: &[(bool, String)]) {
    eprintln!("[setup] cannot set up automatically: {why}.");
    eprintln!("[setup] On Debian 12 (or a Debian/Ubuntu with these packages), as root:");
    for (i, (done, s)) in steps.iter().enumerate() {
        let mark = if *done { "   (already done here)" } else { "" };
        eprintln!("[setup]   {}. {s}{mark}", i + 1);
    }
    eprintln!(
        "[setup] Then build with `cargo xtask build`. Without the eBPF toolchain, userspace \
         alone builds with `AYA_BUILD_SKIP=1 cargo build` (the hepfwd binary then has no XDP \
         program and says so when asked to load it)."
    );
}

fn step_apt(state: &State) -> Result<()> {
    if state.missing_apt.is_empty() {
        println!("[setup] apt packages: already installed");
        return Ok(());
    }
    let missing = state.missing_apt.join(" ");
    println!("[setup] apt packages: installing {missing}");
    cmd::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get update")?;
    // Packages whose recommendations must stay out (prometheus recommends
    // prometheus-node-exporter, a service on port 9100, the admin port of hepfwd's
    // default configuration), then the rest as usual.
    let (bare, usual): (Vec<&str>, Vec<&str>) = state
        .missing_apt
        .iter()
        .partition(|p| WITHOUT_RECOMMENDS.contains(p));
    for (packages, extra) in [(usual, None), (bare, Some("--no-install-recommends"))] {
        if packages.is_empty() {
            continue;
        }
        cmd::run(
            Command::new("apt-get")
                .args(["install", "-y"])
                .args(extra)
                .args(&packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .context("apt-get install")?;
    }
    println!("[setup] apt packages: installed {missing}");
    Ok(())
}

fn step_toolchain(state: &State) -> Result<()> {
    match state.toolchain_linked {
        Some(true) => {
            println!("[setup] rustup toolchain {TOOLCHAIN}: already linked");
            return Ok(());
        }
        Some(false) => {}
        None => bail!(
            "rustup is not installed or not on PATH; install it first (https://rustup.rs), \
             then run `cargo xtask setup` again"
        ),
    }
    cmd::run(Command::new("rustup").args(["toolchain", "link", TOOLCHAIN, "/usr"]))
        .with_context(|| format!("linking Debian's rustc as the rustup toolchain {TOOLCHAIN}"))?;
    let v = cmd::probe("rustup", &["run", TOOLCHAIN, "rustc", "--version"])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("[setup] rustup toolchain {TOOLCHAIN}: linked /usr ({v})");
    Ok(())
}

fn step_bpf_linker(state: &State) -> Result<()> {
    if state.bpf_linker_ok() {
        println!("[setup] bpf-linker {BPF_LINKER_VERSION}: already installed");
        return Ok(());
    }
    match &state.bpf_linker {
        Some(v) => println!("[setup] bpf-linker: found `{v}`, installing {BPF_LINKER_VERSION}"),
        None => println!("[setup] bpf-linker: installing {BPF_LINKER_VERSION} (about a minute)"),
    }
    let old_path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![PathBuf::from(LLVM_PREFIX).join("bin")];
    dirs.extend(std::env::split_paths(&old_path));
    let path = std::env::join_paths(dirs).context("building PATH for the bpf-linker build")?;
    cmd::run(
        cmd::cargo()
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22", "--locked"])
            .env("PATH", path)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX),
    )
    .context("installing bpf-linker")?;
    match bpf_linker_version() {
        Some(v) if v.contains(BPF_LINKER_VERSION) => {
            println!("[setup] bpf-linker {BPF_LINKER_VERSION}: installed ({v})");
            Ok(())
        }
        other => bail!(
            "bpf-linker was installed but `bpf-linker --version` says {other:?}; is {} on PATH?",
            cmd::cargo_bin_dir().map_or_else(|| "~/.cargo/bin".into(), |d| d.display().to_string())
        ),
    }
}

fn step_bpffs(state: &State) -> Result<()> {
    if state.bpffs_mounted {
        println!("[setup] bpffs on {BPFFS}: already mounted");
        return Ok(());
    }
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
        .with_context(|| format!("mounting bpffs on {BPFFS}"))?;
    println!("[setup] bpffs on {BPFFS}: mounted");
    Ok(())
}

fn step_npm(root: &Path, state: &State) -> Result<()> {
    match state.npm_needed {
        None => println!("[setup] npm packages of {HEPJS_DIR}: no package-lock.json, skipped"),
        Some(false) => println!("[setup] npm packages of {HEPJS_DIR}: already installed"),
        Some(true) => {
            cmd::run(
                Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(root.join(HEPJS_DIR)),
            )
            .with_context(|| format!("npm ci in {HEPJS_DIR}"))?;
            println!("[setup] npm packages of {HEPJS_DIR}: installed (npm ci)");
        }
    }
    Ok(())
}

fn step_cargo_deb(state: &State) -> Result<()> {
    if state.cargo_deb_ok() {
        println!("[setup] cargo-deb {CARGO_DEB_VERSION}: already installed");
        return Ok(());
    }
    println!("[setup] cargo-deb: installing {CARGO_DEB_VERSION} (a few minutes)");
    cmd::run(cmd::cargo().args([
        "install",
        "--locked",
        &format!("cargo-deb@{CARGO_DEB_VERSION}"),
    ]))
    .context("installing cargo-deb")?;
    match cargo_deb_version() {
        Some(v) if v.contains(CARGO_DEB_VERSION) => {
            println!("[setup] cargo-deb {CARGO_DEB_VERSION}: installed ({v})");
            Ok(())
        }
        other => bail!("cargo-deb was installed but `cargo-deb --version` says {other:?}"),
    }
}

/// `cargo-deb --version`, looked up on PATH and in cargo's bin directory.
fn cargo_deb_version() -> Option<String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = cmd::find_on_path("cargo-deb") {
        candidates.push(p);
    }
    if let Some(d) = cmd::cargo_bin_dir() {
        candidates.push(d.join("cargo-deb"));
    }
    candidates.into_iter().find_map(|p| {
        let out = cmd::probe(&p, &["--version"])?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
}

/// Effective uid 0, from `/proc/self/status` (no libc dependency).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// `Some(ID)` on Debian, Ubuntu and their derivatives (by `/etc/os-release`).
fn debian_like() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim_matches('"').to_ascii_lowercase())
    };
    let id = field("ID=").unwrap_or_default();
    let like = field("ID_LIKE=").unwrap_or_default();
    let is = |w: &str| id == w || like.split_whitespace().any(|l| l == w);
    (is("debian") || is("ubuntu")).then_some(id)
}

fn dpkg_installed(pkg: &str) -> bool {
    cmd::probe("dpkg-query", &["-W", "-f=${Status}", pkg]).is_some_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "install ok installed"
    })
}

/// Whether `rustup toolchain list` has `debian-web`; `None` without rustup.
fn toolchain_linked() -> Option<bool> {
    let out = cmd::probe("rustup", &["toolchain", "list"])?;
    let list = String::from_utf8_lossy(&out.stdout);
    Some(
        list.lines()
            .any(|l| l.split_whitespace().next() == Some(TOOLCHAIN)),
    )
}

/// `bpf-linker --version`, looked up on PATH and in cargo's bin directory.
fn bpf_linker_version() -> Option<String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = cmd::find_on_path("bpf-linker") {
        candidates.push(p);
    }
    if let Some(d) = cmd::cargo_bin_dir() {
        candidates.push(d.join("bpf-linker"));
    }
    candidates.into_iter().find_map(|p| {
        let out = cmd::probe(&p, &["--version"])?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next(), f.next(), f.next());
            dir == Some(BPFFS) && fstype == Some("bpf")
        })
    })
}

/// `None` without a lockfile; `Some(true)` when `node_modules` is missing or older than
/// the lockfile (npm writes `node_modules/.package-lock.json` on every install).
fn npm_needed(root: &Path) -> Option<bool> {
    let dir = root.join(HEPJS_DIR);
    let lock = dir.join("package-lock.json");
    let lock_time = lock.metadata().and_then(|m| m.modified()).ok()?;
    let manifest_time = dir
        .join("package.json")
        .metadata()
        .and_then(|m| m.modified())
        .ok();
    let installed = dir
        .join("node_modules")
        .join(".package-lock.json")
        .metadata()
        .and_then(|m| m.modified())
        .ok();
    Some(match installed {
        None => true,
        Some(t) => t < lock_time || manifest_time.is_some_and(|m| t < m),
    })
}
