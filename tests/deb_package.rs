//! The Debian package (`cargo xtask deb` → `target/debian/hepfwd_VERSION_amd64.deb`) on
//! this machine: `dpkg -i`, the files where they belong, the conffile, the `hepfwd` user,
//! the installed binary checking its packaged configuration and forwarding a packet as that
//! user, the installed unit verified, a local edit of the conffile kept by a reinstall,
//! then `dpkg -r` (the conffile stays) and `dpkg -P`
//! (the user, `/etc/hepfwd` and `/var/lib/hepfwd` go, and nothing it did not create).
//!
//! The package comes from `$HEPFWD_DEB` (`cargo xtask test` builds it and sets it) or
//! `target/debian/`; without one the test skips loudly. Root only; skips loudly without
//! root or dpkg (a failure under `HEPFWD_REQUIRE_PRIVILEGED=1`), and when a `hepfwd`
//! package or user is already there (it would not leave the machine as it found it). A
//! guard purges the package when the test ends, also on failure.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed unwrap is a failed assertion

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use hepfwd_harness::message::TestMessage;
use hepfwd_tests::collector::{Agent, UdpCollector};
use hepfwd_tests::hepfwd::target_dir;
use hepfwd_tests::peers::{ProcessGuard, TestDir, pick_udp_ports, read_tail};
use hepfwd_tests::privileged;

const PACKAGE: &str = "hepfwd";

/// Every file the package must install (a document may be compressed by the packager:
/// `name` or `name.gz`).
const FILES: &[&str] = &[
    "/usr/bin/hepfwd",
    "/etc/hepfwd/hepfwd.toml",
    "/lib/systemd/system/hepfwd.service",
    "/usr/share/doc/hepfwd/configuration.md",
    "/usr/share/doc/hepfwd/deployment.md",
    "/usr/share/doc/hepfwd/example.toml",
    "/usr/share/doc/hepfwd/changelog.Debian",
    "/usr/share/doc/hepfwd/copyright",
    "/usr/share/hepfwd/grafana/hepfwd.json",
    "/usr/share/hepfwd/prometheus/hepfwd-alerts.yml",
    "/usr/share/man/man1/hepfwd.1",
    "/usr/share/man/man1/hepfwd-run.1",
    "/usr/share/man/man1/hepfwd-check-config.1",
    "/usr/share/bash-completion/completions/hepfwd",
    "/usr/share/zsh/vendor-completions/_hepfwd",
    "/usr/share/fish/vendor_completions.d/hepfwd.fish",
];

/// What the purge must remove.
const CREATED: &[&str] = &["/etc/hepfwd", "/var/lib/hepfwd", "/usr/share/hepfwd"];

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}):\n{}",
        args.join(" "),
        out.status,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dpkg-query`'s status of the package, `None` when dpkg does not know it.
fn package_status() -> Option<String> {
    let out = run("dpkg-query", &["-W", "--showformat=${Status}", PACKAGE]);
    let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !status.is_empty() && status != "unknown ok not-installed")
        .then_some(status)
}

fn getent(database: &str, key: &str) -> Option<String> {
    let out = run("getent", &[database, key]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The file `path`, or its gzip-compressed `path.gz`.
fn installed(path: &str) -> Option<PathBuf> {
    [PathBuf::from(path), PathBuf::from(format!("{path}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}

/// Purges the package when dropped (the test's end, or its failure).
struct PurgeGuard;

impl Drop for PurgeGuard {
    fn drop(&mut self) {
        if package_status().is_some() {
            let out = run("dpkg", &["--purge", PACKAGE]);
            if !out.status.success() {
                eprintln!(
                    "deb_package: cleanup: dpkg --purge {PACKAGE}:\n{}",
                    text(&out)
                );
            }
        }
    }
}

/// What the machine has that the package must not touch: the paths under a few
/// directories (recursively for /etc), and the user and group databases.
#[derive(Debug, PartialEq)]
struct Snapshot {
    paths: BTreeSet<PathBuf>,
    passwd: String,
    group: String,
}

fn walk(dir: &Path, depth: usize, into: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // The user tools' backups (`/etc/passwd-`) may appear; they are not the package's.
        if path.to_string_lossy().ends_with('-') {
            continue;
        }
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        into.insert(path.clone());
        if is_dir && depth > 0 {
            walk(&path, depth - 1, into);
        }
    }
}

impl Snapshot {
    fn take() -> Snapshot {
        let mut paths = BTreeSet::new();
        for (dir, depth) in [
            ("/etc", 8),
            ("/var/lib", 0),
            ("/usr/bin", 0),
            ("/lib/systemd/system", 0),
            ("/usr/share", 0),
            ("/usr/share/doc", 0),
            ("/usr/share/man/man1", 0),
            ("/usr/share/bash-completion/completions", 0),
            ("/usr/share/zsh/vendor-completions", 0),
            ("/usr/share/fish/vendor_completions.d", 0),
        ] {
            walk(Path::new(dir), depth, &mut paths);
        }
        Snapshot {
            paths,
            passwd: std::fs::read_to_string("/etc/passwd").unwrap_or_default(),
            group: std::fs::read_to_string("/etc/group").unwrap_or_default(),
        }
    }
}

fn the_package() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("HEPFWD_DEB").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("$HEPFWD_DEB={} does not exist", p.display()))
        };
    }
    let version = env!("CARGO_PKG_VERSION");
    let p = target_dir()
        .join("debian")
        .join(format!("hepfwd_{version}_amd64.deb"));
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "no package at {} (build it with `cargo xtask deb`)",
            p.display()
        ))
    }
}

#[test]
fn the_package_installs_runs_and_purges_cleanly() {
    let test = "the_package_installs_runs_and_purges_cleanly";
    if !privileged::available(test) {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        privileged::skip(test, "dpkg -i needs root");
        return;
    }
    if Command::new("dpkg").arg("--version").output().is_err() {
        privileged::skip(test, "dpkg is not installed (not a Debian machine)");
        return;
    }
    let deb = match the_package() {
        Ok(p) => p,
        Err(why) => {
            privileged::skip(test, &why);
            return;
        }
    };
    if let Some(status) = package_status() {
        privileged::skip(
            test,
            &format!("the package {PACKAGE} is already here ({status})"),
        );
        return;
    }
    if getent("passwd", "hepfwd").is_some() || getent("group", "hepfwd").is_some() {
        privileged::skip(test, "a hepfwd user or group already exists");
        return;
    }
    for dir in CREATED {
        if Path::new(dir).exists() {
            privileged::skip(test, &format!("{dir} already exists"));
            return;
        }
    }
    let before = Snapshot::take();
    let _purge = PurgeGuard;

    // What it declares and holds.
    let info = ok("dpkg-deb", &["--field", deb.to_str().unwrap()]);
    assert!(info.contains("Package: hepfwd"), "{info}");
    assert!(
        info.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "{info}"
    );
    let depends = info
        .lines()
        .find_map(|l| l.strip_prefix("Depends: "))
        .unwrap_or("");
    assert!(depends.contains("libc6"), "computed Depends: {depends:?}");

    let out = run("dpkg", &["-i", deb.to_str().unwrap()]);
    if !out.status.success() {
        // Only for dependencies that are not installed.
        let text = text(&out);
        assert!(text.contains("dependency problems"), "dpkg -i:\n{text}");
        ok("apt-get", &["install", "-f", "-y"]);
    }
    assert_eq!(
        package_status().as_deref(),
        Some("install ok installed"),
        "dpkg -s"
    );
    let status = ok("dpkg", &["-s", PACKAGE]);
    assert!(status.contains("Status: install ok installed"), "{status}");

    for file in FILES {
        assert!(installed(file).is_some(), "{file} is not installed");
    }
    let bin = std::fs::metadata("/usr/bin/hepfwd").unwrap();
    assert!(
        bin.permissions().mode() & 0o111 != 0,
        "/usr/bin/hepfwd is executable"
    );
    let conffiles = ok("dpkg-query", &["-W", "--showformat=${Conffiles}", PACKAGE]);
    assert!(
        conffiles.contains("/etc/hepfwd/hepfwd.toml"),
        "conffiles: {conffiles:?}"
    );

    // The user and the state directory of the service.
    let user = getent("passwd", "hepfwd").expect("the hepfwd user exists");
    let uid: u32 = user.split(':').nth(2).unwrap().parse().unwrap();
    assert!(uid < 1000, "a system user: {user}");
    assert!(
        getent("group", "hepfwd").is_some(),
        "the hepfwd group exists"
    );
    let state = std::fs::metadata("/var/lib/hepfwd").expect("/var/lib/hepfwd");
    assert!(
        state.is_dir() && state.uid() == uid,
        "/var/lib/hepfwd owned by hepfwd"
    );

    // The installed binary: its version, the packaged configuration, the man page, XDP.
    let version = ok("/usr/bin/hepfwd", &["--version"]);
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let checked = ok(
        "/usr/bin/hepfwd",
        &["check-config", "/etc/hepfwd/hepfwd.toml"],
    );
    assert!(checked.contains("ok"), "{checked}");
    let page = installed("/usr/share/man/man1/hepfwd.1").unwrap();
    let man = Command::new("man")
        .args(["-P", "cat", "-l"])
        .arg(&page)
        .env("MANWIDTH", "80")
        .output();
    match man {
        Ok(out) => {
            assert!(
                out.status.success(),
                "man -l {}: {}",
                page.display(),
                text(&out)
            );
            let shown = String::from_utf8_lossy(&out.stdout);
            assert!(
                shown.contains("SYNOPSIS") && shown.contains("check-config"),
                "{shown}"
            );
        }
        Err(e) => eprintln!("deb_package: no `man` ({e}); the page exists, not rendered"),
    }
    let unit = std::fs::read_to_string("/lib/systemd/system/hepfwd.service").unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/hepfwd run --config /etc/hepfwd/hepfwd.toml"));
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        // The unit as installed, with its binary and man page in place.
        let out = run(
            "systemd-analyze",
            &["verify", "/lib/systemd/system/hepfwd.service"],
        );
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify of the installed unit:\n{}",
            text(&out)
        );
    }

    forwards_as_the_hepfwd_user();

    // The conffile: installing the package again (an upgrade's path) keeps a local edit.
    let edited = "\n# a local edit the upgrade must keep\n";
    let mut config = std::fs::read_to_string("/etc/hepfwd/hepfwd.toml").unwrap();
    config.push_str(edited);
    std::fs::write("/etc/hepfwd/hepfwd.toml", &config).unwrap();
    ok("dpkg", &["-i", deb.to_str().unwrap()]);
    let kept = std::fs::read_to_string("/etc/hepfwd/hepfwd.toml").unwrap();
    assert!(
        kept.ends_with(edited),
        "the reinstall replaced the edited conffile:\n{kept}"
    );

    // Remove: the program goes, the conffile and the user stay.
    ok("dpkg", &["-r", PACKAGE]);
    assert!(
        !Path::new("/usr/bin/hepfwd").exists(),
        "dpkg -r removes the binary"
    );
    assert!(
        Path::new("/etc/hepfwd/hepfwd.toml").is_file(),
        "dpkg -r keeps the conffile"
    );
    assert_eq!(
        package_status().as_deref(),
        Some("deinstall ok config-files")
    );

    // Purge: everything the package created goes, nothing else.
    ok("dpkg", &["-P", PACKAGE]);
    assert_eq!(package_status(), None, "dpkg -P forgets the package");
    assert_eq!(getent("passwd", "hepfwd"), None, "the user is removed");
    assert_eq!(getent("group", "hepfwd"), None, "the group is removed");
    for dir in CREATED {
        assert!(!Path::new(dir).exists(), "{dir} is removed by the purge");
    }
    let after = Snapshot::take();
    let lost: Vec<_> = before.paths.difference(&after.paths).collect();
    let left: Vec<_> = after.paths.difference(&before.paths).collect();
    assert!(
        lost.is_empty(),
        "install + purge removed what it did not create: {lost:?}"
    );
    assert!(left.is_empty(), "install + purge left behind: {left:?}");
    assert_eq!(after.passwd, before.passwd, "/etc/passwd as it was");
    assert_eq!(after.group, before.group, "/etc/group as it was");
}

/// The installed `/usr/bin/hepfwd`, as the `hepfwd` user, on a userspace configuration
/// on loopback: `READY=1` on the notify socket, one packet forwarded byte for byte,
/// `STOPPING=1` and exit 0 on SIGTERM.
fn forwards_as_the_hepfwd_user() {
    let dir = TestDir::new("deb").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let collector = UdpCollector::new("deb");
    let listen = pick_udp_ports([127, 0, 0, 1].into(), 1).unwrap()[0];
    let config = dir.join("hepfwd.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"agents\"\nudp = \"127.0.0.1:{listen}\"\n\n\
             [[destination]]\nname = \"collector\"\naddress = \"{}\"\n\n\
             [default]\nforward = [\"collector\"]\n",
            collector.addr
        ),
    )
    .unwrap();
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o777)).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=hepfwd",
        "--regid=hepfwd",
        "--init-groups",
        "--no-new-privs",
        "/usr/bin/hepfwd",
        "run",
        "--mode",
        "userspace",
        "--config",
    ])
    .arg(&config)
    .env("NOTIFY_SOCKET", &notify_path);
    let stderr = dir.join("hepfwd.stderr");
    let mut daemon =
        ProcessGuard::spawn("hepfwd", cmd, &dir.join("hepfwd.stdout"), &stderr).unwrap();
    let mut buf = [0u8; 4096];
    let n = notify
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no READY=1 ({e}):\n{}", read_tail(&stderr, 64 * 1024)));
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        ready.starts_with("READY=1\n") && ready.contains("STATUS=userspace"),
        "{ready}"
    );
    let packet = TestMessage::sip("installed@deb").encode();
    Agent::new().send(([127, 0, 0, 1], listen).into(), &packet);
    let got = collector.inbox.recv(Duration::from_secs(10));
    assert_eq!(
        got.as_deref(),
        Some(packet.as_slice()),
        "the collector got the packet, unchanged; hepfwd stderr:\n{}",
        read_tail(&stderr, 64 * 1024)
    );
    let status = daemon.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "exit status {status}");
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
}
