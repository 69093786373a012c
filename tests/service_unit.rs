//! The systemd unit (`deploy/systemd/hepfwd.service`) and the packaged configuration
//! (`deploy/debian/hepfwd.toml`) as shipped in the Debian package.
//!
//! - `systemd-analyze verify` accepts the unit, on a copy whose `ExecStart=` names the
//!   built binary (the unit names `/usr/bin/hepfwd`, which need not exist here) and with
//!   `MANPATH` at the man pages `hepfwd dist-docs` generates (for `Documentation=man:`);
//!   and rejects a copy whose program is missing, and warns on an unknown `Type=` (so the
//!   check can fail).
//! - The unit has the settings the deployment relies on (`Type=notify`, the user, exactly
//!   the XDP path's capabilities, the sandbox).
//! - The packaged configuration passes `hepfwd check-config` and is userspace-only.
//!
//! Without `systemd-analyze` the first test skips loudly (and fails under
//! `HEPFWD_REQUIRE_PRIVILEGED=1`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed unwrap is a failed assertion

use std::path::Path;
use std::process::Command;

use hepfwd_harness::privileged;
use hepfwd_tests::hepfwd::{hepfwd_bin, workspace_root};
use hepfwd_tests::peers::TestDir;

const UNIT: &str = "deploy/systemd/hepfwd.service";
const PACKAGED_CONFIG: &str = "deploy/debian/hepfwd.toml";

fn unit_text() -> String {
    std::fs::read_to_string(workspace_root().join(UNIT)).unwrap()
}

/// `systemd-analyze verify UNIT` with `MANPATH` at `manpath`: (success, stderr).
fn verify(unit: &Path, manpath: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .env("MANPATH", manpath)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_and_rejects_a_broken_one() {
    let test = "systemd_analyze_verify_accepts_the_unit_and_rejects_a_broken_one";
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        privileged::skip(test, "systemd-analyze is not installed (Debian: systemd)");
        return;
    }
    let bin = hepfwd_bin().unwrap();
    let dir = TestDir::new("unit").unwrap();
    // The man pages for `Documentation=man:hepfwd(1)`, generated like the package's.
    let out = Command::new(&bin)
        .args(["dist-docs", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let manpath = dir.join("man");
    assert!(manpath.join("man1").join("hepfwd.1").is_file());

    let text = unit_text();
    assert!(text.contains("ExecStart=/usr/bin/hepfwd run"), "{text}");
    let local = text.replace("/usr/bin/hepfwd", bin.to_str().unwrap());
    let unit = dir.join("hepfwd.service");
    std::fs::write(&unit, &local).unwrap();
    let (ok, stderr) = verify(&unit, &manpath);
    assert!(ok, "systemd-analyze verify rejected the unit:\n{stderr}");
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned about the unit:\n{stderr}"
    );

    // The same check fails on a unit whose program is missing, and warns about a setting
    // with a value systemd does not know.
    let broken = dir.join("broken").join("hepfwd.service");
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    std::fs::write(
        &broken,
        text.replace("/usr/bin/hepfwd", "/nonexistent/hepfwd"),
    )
    .unwrap();
    let (ok, stderr) = verify(&broken, &manpath);
    assert!(
        !ok && stderr.contains("/nonexistent/hepfwd"),
        "a unit without its program passed verification:\n{stderr}"
    );
    std::fs::write(
        &broken,
        local.replace("Type=notify", "Type=notify-when-ready"),
    )
    .unwrap();
    let (_, stderr) = verify(&broken, &manpath);
    assert!(
        stderr.contains("notify-when-ready"),
        "an unknown Type= passed verification silently:\n{stderr}"
    );
}

/// The values of `key=` in the unit's lines (comments and other sections included).
fn settings(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_unit_runs_as_hepfwd_with_only_the_xdp_capabilities_and_notifies() {
    let text = unit_text();
    let one = |key: &str| -> String {
        let v = settings(&text, key);
        assert_eq!(v.len(), 1, "{key}= should be set exactly once: {v:?}");
        v[0].clone()
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(
        one("ExecStart"),
        "/usr/bin/hepfwd run --config /etc/hepfwd/hepfwd.toml"
    );
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("User"), "hepfwd");
    let caps = "CAP_BPF CAP_NET_ADMIN CAP_PERFMON";
    assert_eq!(one("AmbientCapabilities"), caps);
    assert_eq!(one("CapabilityBoundingSet"), caps);
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "hepfwd"),
        (
            "RestrictAddressFamilies",
            "AF_INET AF_INET6 AF_NETLINK AF_UNIX",
        ),
        ("LimitMEMLOCK", "infinity"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(one(key), value, "{key}=");
    }
    assert!(one("LimitNOFILE").parse::<u64>().unwrap() >= 65_536);
    assert!(
        text.contains("CAP_NET_BIND_SERVICE"),
        "the unit says when CAP_NET_BIND_SERVICE is needed"
    );
}

#[test]
fn the_packaged_configuration_passes_check_config_and_stays_in_userspace() {
    let path = workspace_root().join(PACKAGED_CONFIG);
    let out = Command::new(hepfwd_bin().unwrap())
        .arg("check-config")
        .arg(&path)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check-config {}: {stdout}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 listener(s), 1 destination(s)"),
        "{stdout}"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    // Userspace as packaged: no uncommented [xdp] table.
    assert!(
        !text.lines().any(|l| l.trim_start().starts_with("[xdp]")),
        "{text}"
    );
    assert!(text.contains("udp = \"0.0.0.0:9060\""), "{text}");
    assert!(text.contains("address = \"127.0.0.1:"), "{text}");
}
