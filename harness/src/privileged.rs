//! Privileged tests (root / CAP_BPF / CAP_NET_ADMIN: XDP, network namespaces) skip loudly
//! when they cannot run, and fail instead when `HEPFWD_REQUIRE_PRIVILEGED=1` (set by
//! `cargo xtask test` under CI as root), so a CI run cannot pass by skipping them.
//!
//! ```no_run
//! # use hepfwd_harness::privileged;
//! #[test]
//! fn attaches_xdp() {
//!     if !privileged::available("attaches_xdp") {
//!         return;
//!     }
//!     // ... the test ...
//! }
//! ```
/// The variable that turns a skip into a failure.
pub const REQUIRE_VAR: &str = "HEPFWD_REQUIRE_PRIVILEGED";

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Whether privileged tests must run (`HEPFWD_REQUIRE_PRIVILEGED` is `1` or `true`).
pub fn required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// `Ok` when this process may load BPF programs and manage interfaces and namespaces:
/// effective uid 0, or CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN. `Err` says what is
/// missing.
pub fn check() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let euid = field("Uid:").and_then(|v| v.split_whitespace().nth(1));
    if euid == Some("0") {
        return Ok(());
    }
    let eff = field("CapEff:")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    if (has(CAP_BPF) || has(CAP_SYS_ADMIN)) && has(CAP_NET_ADMIN) {
        return Ok(());
    }
    Err(format!(
        "not root (euid {}) and missing CAP_BPF/CAP_SYS_ADMIN or CAP_NET_ADMIN (CapEff {eff:#x})",
        euid.unwrap_or("?")
    ))
}

/// Whether test `name` can run. When it cannot: panics if [`required`], otherwise prints a
/// loud SKIPPED banner to stderr and returns `false` (the caller returns early).
pub fn available(name: &str) -> bool {
    match check() {
        Ok(()) => true,
        Err(why) => skip(name, &why),
    }
}

/// Skips test `name` for reason `why` (loudly), or fails it when skips are not allowed.
/// Always returns `false`, for `if !cond { return skip(...) }`-style use.
pub fn skip(name: &str, why: &str) -> bool {
    if required() {
        panic!("{name}: cannot run ({why}) and {REQUIRE_VAR}=1 forbids skipping it");
    }
    // Straight to the stderr fd, not `eprintln!`: the test harness captures the print
    // macros of passing tests, and a skip must be seen.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIPPED {name}: {why}.\n!!!!!!!! They need root and the XDP build: `cargo xtask test` as root does both; \
         set {REQUIRE_VAR}=1 to make this skip a failure.\n"
    );
    false
}
