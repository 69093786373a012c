//! Running the `ip` tool (and other programs) and asserting success.

use std::process::{Command, Stdio};

/// Runs `program ARGS` (stdin closed) and returns its stdout; panics with the program's
/// stderr when it cannot start or fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program} {args:?}: {error}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `ip ARGS`, asserting success; its stdout.
pub fn ip(args: &[&str]) -> String {
    run("ip", args)
}

/// A MAC address as `ip` writes it (`02:00:00:00:00:a0`).
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
