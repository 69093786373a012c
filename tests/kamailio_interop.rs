//! Interop with Kamailio as a real HEP agent.
//!
//! Kamailio 5.6 runs as a stateful SIP proxy (tm, rr, sl) between a sipp uac
//! (`sipp -sn uac`) and a sipp uas (`sipp -sn uas`), all on 127.0.0.1, and mirrors every
//! SIP message it receives or sends as HEP (siptrace `hep_mode_on=1`, `trace_mode=1`)
//! to a UDP socket owned by this test. The datagrams are then decoded by
//! `hepfwd decode --hex` and checked against what the SIP hops must have been:
//!
//! * exactly 13 HEP packets per call: INVITE, 100 (from Kamailio's tm only: sipp's uas
//!   sends no 100), 180, 200, ACK, BYE and the BYE's 200 on both legs;
//! * every packet: the expected HEP version, protocol type 1 (SIP), capture ID, inner
//!   IPv4 addresses and ports of its SIP hop, a timestamp taken during the test, the
//!   SIP payload, and a correlation ID equal to the payload's Call-ID (Kamailio sends no
//!   chunk 0x0011);
//! * per call, the exact multiset of (hop, message) above;
//! * the set of Call-IDs equals the set sipp logged in its own message traces (both
//!   uac and uas), which must hold `CALLS` distinct Call-IDs; so the test cannot pass
//!   vacuously.
//!
//! HEPv3: Kamailio 5.6.3 sends the chunks 0x0001 0x0002 0x0003 0x0004 0x0007 0x0008
//! 0x0009 0x000a 0x000b 0x000c 0x000f (vendor 0), in that order; the test asserts that
//! layout. HEPv2: 28-byte header (16 + 12-byte time header) then the SIP message.
//!
//! Kamailio runs with one UDP worker (`children=1`): with two, the 180 and 200 that sipp's
//! uas sends back to back can be relayed out of order, tm then drops the late 180 and the
//! call has 12 packets (see `interop/kamailio/siptrace-proxy.cfg`).
//!
//! If kamailio or sipp is missing the tests fail, naming `cargo xtask setup`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail, ensure};
use hepfwd_tests::hepfwd::hepfwd_bin;
use hepfwd_tests::peers::{self, ProcessGuard, TestDir, read_tail, udp_port_bound, wait_until};
use serde_json::Value;

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Calls per test run.
const CALLS: usize = 5;
/// HEP packets Kamailio sends per call (see the module docs).
const HEP_PER_CALL: usize = 13;
/// A non-default `hep_capture_id`, so a decoder printing a default cannot pass.
const CAPTURE_ID: u64 = 4242;
/// The Kamailio config template (placeholders `@NAME@`).
const CFG_TEMPLATE: &str = include_str!("interop/kamailio/siptrace-proxy.cfg");
/// sipp's own global timeout (`-timeout`), seconds.
const SIPP_TIMEOUT_S: u64 = 60;
/// Our overall bound on the SIP/HEP exchange.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(90);
/// After both sipps exited, stop collecting HEP once nothing arrived for this long (a
/// late or extra packet must get the chance to show up and fail the count).
const QUIET: Duration = Duration::from_millis(1500);
/// Chunk types of a Kamailio 5.6 siptrace HEPv3 packet, in order (all vendor 0).
const KAMAILIO_V3_CHUNKS: [u64; 11] = [1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 15];

#[test]
fn kamailio_siptrace_hepv3_calls_decode() {
    run_interop(3);
}

#[test]
fn kamailio_siptrace_hepv2_calls_decode() {
    run_interop(2);
}

/// The four directions SIP travels in this topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Hop {
    UacToProxy,
    ProxyToUac,
    ProxyToUas,
    UasToProxy,
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    /// Kamailio's SIP listener.
    sip: u16,
    /// Kamailio's dedicated HEP send socket (`send_sock_name`).
    hep_src: u16,
    uas: u16,
    uac: u16,
}

impl Ports {
    fn hop(&self, src_port: u16, dst_port: u16) -> Option<Hop> {
        match (src_port, dst_port) {
            (s, d) if s == self.uac && d == self.sip => Some(Hop::UacToProxy),
            (s, d) if s == self.sip && d == self.uac => Some(Hop::ProxyToUac),
            (s, d) if s == self.sip && d == self.uas => Some(Hop::ProxyToUas),
            (s, d) if s == self.uas && d == self.sip => Some(Hop::UasToProxy),
            _ => None,
        }
    }
}

/// The multiset of (hop, message label) every call must produce.
fn expected_call_messages() -> BTreeMap<(Hop, String), usize> {
    let mut m = BTreeMap::new();
    let mut add = |hop, label: &str| *m.entry((hop, label.to_owned())).or_insert(0) += 1;
    for req in ["INVITE", "ACK", "BYE"] {
        add(Hop::UacToProxy, req);
        add(Hop::ProxyToUas, req);
    }
    for resp in ["180 INVITE", "200 INVITE", "200 BYE"] {
        add(Hop::UasToProxy, resp);
        add(Hop::ProxyToUac, resp);
    }
    // tm answers the INVITE with 100 itself; sipp's uas sends none.
    add(Hop::ProxyToUac, "100 INVITE");
    debug_assert_eq!(m.values().sum::<usize>(), HEP_PER_CALL);
    m
}

/// Everything the test started; dropping it stops the processes (uac, uas, then
/// Kamailio), which the `TestDir` (declared before it, so dropped after) outlives.
struct Peers {
    kamailio: ProcessGuard,
    uas: ProcessGuard,
    uac: Option<ProcessGuard>,
}

impl Drop for Peers {
    fn drop(&mut self) {
        // Explicit order: the SIP endpoints before the proxy.
        drop(self.uac.take());
        let _ = self.uas.terminate(Duration::from_secs(5));
        let _ = self.kamailio.terminate(Duration::from_secs(5));
    }
}

fn run_interop(hep_version: u64) {
    // Missing peers must fail loudly (naming `cargo xtask setup`), never skip.
    let kamailio = peers::kamailio().expect("kamailio is required for this test");
    let sipp = peers::sipp().expect("sipp is required for this test");
    let hepfwd = hepfwd_bin().expect("the hepfwd binary is required for this test");

    let dir = TestDir::new(&format!("kamailio-hepv{hep_version}")).expect("create test dir");
    let mut logs: Vec<(String, PathBuf)> = Vec::new();
    let res = exercise(&dir, &kamailio, &sipp, &hepfwd, hep_version, &mut logs);
    if let Err(e) = res {
        let mut msg = format!("Kamailio HEPv{hep_version} interop failed: {e:#}\n");
        for (name, path) in &logs {
            let _ = write!(
                msg,
                "\n===== {name} ({}) =====\n{}\n",
                path.display(),
                read_tail(path, 12_000)
            );
        }
        panic!("{msg}");
    }
}

/// Runs the whole exchange; `logs` collects the files worth printing on failure.
fn exercise(
    dir: &TestDir,
    kamailio: &Path,
    sipp: &Path,
    hepfwd: &Path,
    hep_version: u64,
    logs: &mut Vec<(String, PathBuf)>,
) -> Result<()> {
    // Our HEP collector: bound first (port 0), so its port cannot be taken by anyone.
    let collector = UdpSocket::bind((LOOPBACK, 0)).context("bind the HEP collector socket")?;
    collector
        .set_read_timeout(Some(Duration::from_millis(100)))
        .context("set_read_timeout")?;
    let hep_port = collector.local_addr()?.port();

    let (mut peers, mut ports) =
        start_proxy_and_uas(dir, kamailio, sipp, hep_version, hep_port, logs)?;
    // The uac's port is in no config: pick it just before use, so it is most likely free.
    ports.uac = peers::pick_udp_ports(LOOPBACK, 1)?[0];

    // The uac places CALLS calls through the proxy, at most 10 per second.
    let t_start = unix_now_secs();
    let uac_msgs = dir.join("uac_messages.log");
    let mut uac_cmd = Command::new(sipp);
    uac_cmd.current_dir(dir.path());
    uac_cmd.arg("-sn").arg("uac");
    uac_cmd.args(sipp_common_args(
        ports.uac,
        &uac_msgs,
        &dir.join("uac_errors.log"),
    ));
    uac_cmd
        .args(["-r", "10", "-rp", "1000", "-l", &CALLS.to_string()])
        .arg(format!("{LOOPBACK}:{}", ports.sip));
    let uac = ProcessGuard::spawn(
        "sipp uac",
        uac_cmd,
        &dir.join("uac.screen"),
        &dir.join("uac.stderr"),
    )?;
    logs.push(("sipp uac screen".into(), uac.stdout_path().to_owned()));
    logs.push(("sipp uac stderr".into(), uac.stderr_path().to_owned()));
    logs.push(("sipp uac errors".into(), dir.join("uac_errors.log")));
    peers.uac = Some(uac);

    // Collect HEP until both sipps are done and the line has been quiet for QUIET.
    let datagrams = collect_hep(&collector, &mut peers)?;
    let t_end = unix_now_secs();

    let uac_status = peers
        .uac
        .as_mut()
        .map(|u| u.try_wait())
        .transpose()?
        .flatten();
    let uas_status = peers.uas.try_wait()?;
    ensure!(
        uac_status.is_some_and(|s| s.success()),
        "sipp uac did not complete all {CALLS} calls successfully: {uac_status:?}"
    );
    ensure!(
        uas_status.is_some_and(|s| s.success()),
        "sipp uas did not complete all {CALLS} calls successfully: {uas_status:?}"
    );
    ensure!(
        peers.kamailio.try_wait()?.is_none(),
        "Kamailio exited during the test"
    );

    // HEP comes from the dedicated siptrace socket only.
    for (from, _) in &datagrams {
        ensure!(
            *from == SocketAddr::from((LOOPBACK, ports.hep_src)),
            "a HEP datagram came from {from}, not from Kamailio's send socket 127.0.0.1:{}",
            ports.hep_src
        );
    }

    // What sipp says the calls were, independently of HEP.
    let uac_call_ids = sipp_call_ids(&uac_msgs)?;
    let uas_call_ids = sipp_call_ids(&dir.join("uas_messages.log"))?;
    ensure!(
        uac_call_ids.len() == CALLS,
        "sipp uac logged {} Call-IDs, expected {CALLS}: {uac_call_ids:?}",
        uac_call_ids.len()
    );
    ensure!(
        uas_call_ids == uac_call_ids,
        "sipp uas saw Call-IDs {uas_call_ids:?}, uac sent {uac_call_ids:?}"
    );

    // Decode with `hepfwd decode --hex`.
    let hex_path = dir.join("hep.hex");
    let mut hex = String::new();
    for (_, d) in &datagrams {
        hex.push_str(&to_hex(d));
        hex.push('\n');
    }
    fs::write(&hex_path, &hex).context("write hep.hex")?;
    logs.push(("HEP datagrams as hex".into(), hex_path.clone()));
    let decoded = decode_with_hepfwd(dir, hepfwd, &hex_path, logs)?;
    ensure!(
        decoded.len() == datagrams.len(),
        "hepfwd decode printed {} JSON lines for {} packets",
        decoded.len(),
        datagrams.len()
    );

    // Per-packet checks, then grouping by Call-ID.
    let mut per_call: BTreeMap<String, BTreeMap<(Hop, String), usize>> = BTreeMap::new();
    for (i, (obj, (_, raw))) in decoded.iter().zip(&datagrams).enumerate() {
        let (call_id, hop, label) = check_packet(obj, raw, hep_version, &ports, t_start, t_end)
            .with_context(|| format!("HEP packet #{i}: {obj}"))?;
        *per_call
            .entry(call_id)
            .or_default()
            .entry((hop, label))
            .or_insert(0) += 1;
    }

    let hep_call_ids: BTreeSet<String> = per_call.keys().cloned().collect();
    ensure!(
        hep_call_ids == uac_call_ids,
        "Call-IDs in HEP {hep_call_ids:?} differ from the calls sipp made {uac_call_ids:?}"
    );
    let expected = expected_call_messages();
    for (call_id, got) in &per_call {
        ensure!(
            *got == expected,
            "call {call_id}: HEP messages (hop, message) -> count\n  got      {got:?}\n  expected {expected:?}\n\
             (sipp runs with -nr, so an extra packet would be a tm retransmission, which \
             Kamailio traces too; a missing 180 on the uac leg is the children>1 race \
             described in the config)"
        );
    }
    ensure!(
        datagrams.len() == CALLS * HEP_PER_CALL,
        "{} HEP packets, expected {CALLS} calls x {HEP_PER_CALL}",
        datagrams.len()
    );

    drop(peers);
    Ok(())
}

/// Starts Kamailio and the sipp uas on fresh ports, retrying (fresh ports) if one of them
/// could not bind because another process took a port in between.
fn start_proxy_and_uas(
    dir: &TestDir,
    kamailio: &Path,
    sipp: &Path,
    hep_version: u64,
    hep_port: u16,
    logs: &mut Vec<(String, PathBuf)>,
) -> Result<(Peers, Ports)> {
    const ATTEMPTS: usize = 3;
    let mut last_err = None;
    for attempt in 1..=ATTEMPTS {
        let p = peers::pick_udp_ports(LOOPBACK, 3)?;
        let ports = Ports {
            sip: p[0],
            hep_src: p[1],
            uas: p[2],
            uac: 0, // chosen when the uac starts
        };
        logs.retain(|(name, _)| !name.starts_with("Kamailio") && !name.starts_with("sipp uas"));
        match try_start(
            dir,
            kamailio,
            sipp,
            hep_version,
            hep_port,
            ports,
            attempt,
            logs,
        ) {
            Ok(peers) => return Ok((peers, ports)),
            Err((e, retry)) => {
                if !retry {
                    return Err(e);
                }
                eprintln!("attempt {attempt}: {e:#}; retrying with fresh ports");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no attempt made"))).context(format!(
        "could not start Kamailio and sipp uas in {ATTEMPTS} attempts"
    ))
}

/// One start attempt. The error says whether a retry with other ports makes sense.
#[allow(clippy::too_many_arguments)]
fn try_start(
    dir: &TestDir,
    kamailio: &Path,
    sipp: &Path,
    hep_version: u64,
    hep_port: u16,
    ports: Ports,
    attempt: usize,
    logs: &mut Vec<(String, PathBuf)>,
) -> std::result::Result<Peers, (anyhow::Error, bool)> {
    let fatal = |e: anyhow::Error| (e, false);

    let cfg = render_config(hep_version, hep_port, ports).map_err(fatal)?;
    let cfg_path = dir.join(&format!("kamailio-{attempt}.cfg"));
    fs::write(&cfg_path, cfg)
        .context("write Kamailio config")
        .map_err(fatal)?;
    let run_dir = dir.join(&format!("kamailio-run-{attempt}"));
    fs::create_dir_all(&run_dir)
        .context("create Kamailio runtime dir")
        .map_err(fatal)?;

    // -DD: stay in the foreground (workers are forked, in our process group); -E: log to
    // stderr; -Y/-P/-w: runtime files in our temp dir, not /run/kamailio.
    let mut cmd = Command::new(kamailio);
    cmd.arg("-DD")
        .arg("-E")
        .arg("-f")
        .arg(&cfg_path)
        .arg("-Y")
        .arg(&run_dir)
        .arg("-P")
        .arg(run_dir.join("kamailio.pid"))
        .arg("-w")
        .arg(&run_dir)
        .args(["-m", "64", "-M", "8"])
        .current_dir(dir.path());
    let klog = dir.join(&format!("kamailio-{attempt}.log"));
    let mut k = ProcessGuard::spawn(
        "kamailio",
        cmd,
        &dir.join(&format!("kamailio-{attempt}.stdout")),
        &klog,
    )
    .map_err(fatal)?;
    logs.push((format!("Kamailio config (attempt {attempt})"), cfg_path));
    logs.push((format!("Kamailio log (attempt {attempt})"), klog.clone()));
    logs.push((
        format!("Kamailio stdout (attempt {attempt})"),
        k.stdout_path().to_owned(),
    ));

    let ready = wait_until(
        "Kamailio to bind its UDP sockets",
        Duration::from_secs(15),
        || {
            if let Some(st) = k.try_wait()? {
                bail!("Kamailio exited during startup: {st}");
            }
            Ok(udp_port_bound(LOOPBACK, ports.sip)? && udp_port_bound(LOOPBACK, ports.hep_src)?)
        },
    );
    if let Err(e) = ready {
        let log = fs::read_to_string(&klog).unwrap_or_default();
        let retry = log.contains("Address already in use");
        return Err((e, retry));
    }

    let uas_msgs = dir.join("uas_messages.log");
    let mut uas_cmd = Command::new(sipp);
    uas_cmd.current_dir(dir.path());
    uas_cmd.arg("-sn").arg("uas");
    uas_cmd.args(sipp_common_args(
        ports.uas,
        &uas_msgs,
        &dir.join("uas_errors.log"),
    ));
    let mut uas = ProcessGuard::spawn(
        "sipp uas",
        uas_cmd,
        &dir.join("uas.screen"),
        &dir.join("uas.stderr"),
    )
    .map_err(fatal)?;
    logs.push(("sipp uas screen".into(), uas.stdout_path().to_owned()));
    logs.push(("sipp uas stderr".into(), uas.stderr_path().to_owned()));
    logs.push(("sipp uas errors".into(), dir.join("uas_errors.log")));
    let ready = wait_until(
        "sipp uas to bind its UDP port",
        Duration::from_secs(15),
        || {
            if let Some(st) = uas.try_wait()? {
                bail!("sipp uas exited during startup: {st}");
            }
            udp_port_bound(LOOPBACK, ports.uas)
        },
    );
    if let Err(e) = ready {
        let out = read_tail(uas.stdout_path(), 4000) + &read_tail(uas.stderr_path(), 4000);
        let retry = out.contains("Address already in use");
        return Err((e, retry));
    }

    Ok(Peers {
        kamailio: k,
        uas,
        uac: None,
    })
}

/// sipp options shared by uac and uas: loopback, our port, `-m CALLS` (exit after that
/// many calls), no stdin, a global timeout that counts as an error, no UDP
/// retransmissions (each one would be traced by Kamailio and change the HEP count), and
/// the message trace whose Call-IDs we cross-check.
fn sipp_common_args(port: u16, messages: &Path, errors: &Path) -> Vec<String> {
    vec![
        "-i".into(),
        LOOPBACK.to_string(),
        "-p".into(),
        port.to_string(),
        "-m".into(),
        CALLS.to_string(),
        "-nostdin".into(),
        "-nr".into(),
        "-timeout".into(),
        format!("{SIPP_TIMEOUT_S}s"),
        "-timeout_error".into(),
        "-trace_msg".into(),
        "-message_file".into(),
        messages.display().to_string(),
        "-trace_err".into(),
        "-error_file".into(),
        errors.display().to_string(),
    ]
}

fn render_config(hep_version: u64, hep_port: u16, p: Ports) -> Result<String> {
    let cfg = CFG_TEMPLATE
        .replace("@SIP_PORT@", &p.sip.to_string())
        .replace("@HEP_SRC_PORT@", &p.hep_src.to_string())
        .replace("@HEP_VERSION@", &hep_version.to_string())
        .replace("@HEP_PORT@", &hep_port.to_string())
        .replace("@UAS_PORT@", &p.uas.to_string())
        .replace("@CAPTURE_ID@", &CAPTURE_ID.to_string());
    // Any placeholder left (outside comments) is a template/test mismatch.
    for line in cfg.lines().filter(|l| !l.trim_start().starts_with('#')) {
        ensure!(
            !line.contains('@'),
            "unsubstituted placeholder in Kamailio config: {line}"
        );
    }
    Ok(cfg)
}

/// Receives HEP datagrams until both sipps have exited and nothing arrived for `QUIET`
/// (or fails at `EXCHANGE_DEADLINE`, or if Kamailio dies).
fn collect_hep(sock: &UdpSocket, peers: &mut Peers) -> Result<Vec<(SocketAddr, Vec<u8>)>> {
    let deadline = Instant::now() + EXCHANGE_DEADLINE;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let mut last_rx = Instant::now();
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                out.push((from, buf[..n].to_vec()));
                last_rx = Instant::now();
                continue;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("recv on the HEP collector socket"),
        }
        if let Some(st) = peers.kamailio.try_wait()? {
            bail!(
                "Kamailio exited during the calls ({st}); {} HEP packets so far",
                out.len()
            );
        }
        let uac_done = match peers.uac.as_mut() {
            Some(u) => u.try_wait()?.is_some(),
            None => true,
        };
        let uas_done = peers.uas.try_wait()?.is_some();
        if uac_done && uas_done && last_rx.elapsed() >= QUIET {
            return Ok(out);
        }
        if Instant::now() >= deadline {
            bail!(
                "no end of the SIP exchange within {EXCHANGE_DEADLINE:?} (uac done: {uac_done}, \
                 uas done: {uas_done}); {} HEP packets so far",
                out.len()
            );
        }
    }
}

/// Runs `hepfwd decode --hex < hex_path` (bounded) and parses one JSON object per line.
fn decode_with_hepfwd(
    dir: &TestDir,
    hepfwd: &Path,
    hex_path: &Path,
    logs: &mut Vec<(String, PathBuf)>,
) -> Result<Vec<Value>> {
    let stdin = File::open(hex_path).context("open hep.hex")?;
    let mut cmd = Command::new(hepfwd);
    cmd.args(["decode", "--hex"]);
    let out_path = dir.join("decode.jsonl");
    let err_path = dir.join("decode.stderr");
    logs.push(("hepfwd decode stdout".into(), out_path.clone()));
    logs.push(("hepfwd decode stderr".into(), err_path.clone()));
    let mut p = ProcessGuard::spawn_with_stdin("hepfwd decode", cmd, stdin, &out_path, &err_path)?;
    let status: ExitStatus = match p.wait_timeout(Duration::from_secs(30))? {
        Some(st) => st,
        None => bail!("`hepfwd decode --hex` did not finish within 30 s"),
    };
    ensure!(status.success(), "`hepfwd decode --hex` failed: {status}");
    let text = fs::read_to_string(&out_path).context("read decode output")?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str::<Value>(l)
                .with_context(|| format!("decode output line {i} is not JSON: {l}"))
        })
        .collect()
}

/// Checks one decoded packet; returns its Call-ID, hop and message label.
fn check_packet(
    obj: &Value,
    raw: &[u8],
    hep_version: u64,
    ports: &Ports,
    t_start: u64,
    t_end: u64,
) -> Result<(String, Hop, String)> {
    if let Some(err) = obj.get("error") {
        bail!("hepfwd could not decode it: {err}");
    }
    let u = |k: &str| -> Result<u64> {
        obj.get(k)
            .and_then(Value::as_u64)
            .with_context(|| format!("`{k}` missing or not an unsigned integer"))
    };
    let s = |k: &str| -> Result<&str> {
        obj.get(k)
            .and_then(Value::as_str)
            .with_context(|| format!("`{k}` missing or not a string"))
    };

    let expect_u = |k: &str, want: u64| -> Result<()> {
        let got = u(k)?;
        ensure!(got == want, "`{k}` is {got}, expected {want}");
        Ok(())
    };
    expect_u("version", hep_version)?;
    expect_u("proto_type", 1)?; // SIP
    expect_u("capture_id", CAPTURE_ID)?;
    for k in ["src_ip", "dst_ip"] {
        let got = s(k)?;
        ensure!(
            got == "127.0.0.1",
            "`{k}` is {got:?}, expected \"127.0.0.1\""
        );
    }
    let src_port = u16::try_from(u("src_port")?).context("src_port")?;
    let dst_port = u16::try_from(u("dst_port")?).context("dst_port")?;
    let hop = ports.hop(src_port, dst_port).with_context(|| {
        format!("ports {src_port} -> {dst_port} are not a SIP hop of {ports:?}")
    })?;
    let ts_sec = u("ts_sec")?;
    ensure!(
        ts_sec + 2 >= t_start && ts_sec <= t_end + 2,
        "ts_sec {ts_sec} outside the test's run [{t_start}, {t_end}]"
    );
    ensure!(u("ts_usec")? < 1_000_000, "ts_usec >= 1e6");
    // Fields beyond the minimal contract, checked when the decoder prints them.
    for (k, want) in [
        ("ip_family", 2),
        ("ip_proto", 17),
        ("len", raw.len() as u64),
    ] {
        if obj.get(k).is_some() {
            expect_u(k, want)?;
        }
    }
    if let Some(src) = obj.get("correlation_source") {
        ensure!(
            src == "sip_call_id",
            "correlation_source is {src}, expected \"sip_call_id\" (Kamailio sends no 0x0011)"
        );
    }
    for k in ["node_name", "auth_key"] {
        ensure!(
            obj.get(k).is_none_or(Value::is_null),
            "`{k}` should be null, Kamailio sends none"
        );
    }

    let payload = s("payload").context("SIP should be decoded as UTF-8 text")?;
    // The payload is the last thing in both layouts Kamailio sends.
    ensure!(
        raw.ends_with(payload.as_bytes()) && !payload.is_empty(),
        "payload is not the tail of the datagram"
    );

    let chunks = obj
        .get("chunks")
        .and_then(Value::as_array)
        .context("`chunks` missing or not an array")?;
    if hep_version == 3 {
        let got: Vec<(u64, u64, u64)> = chunks
            .iter()
            .map(|c| {
                let f = |k: &str| c.get(k).and_then(Value::as_u64);
                match (f("vendor"), f("type"), f("len")) {
                    (Some(v), Some(t), Some(l)) => Ok((v, t, l)),
                    _ => bail!("bad chunk entry {c}"),
                }
            })
            .collect::<Result<_>>()?;
        let mut want: Vec<(u64, u64, u64)> = KAMAILIO_V3_CHUNKS
            .iter()
            .zip([7, 7, 10, 10, 8, 8, 10, 10, 7, 10])
            .map(|(&t, l)| (0, t, l))
            .collect();
        want.push((0, 15, payload.len() as u64 + 6));
        ensure!(got == want, "chunk list {got:?}, expected {want:?}");
        let total: u64 = got.iter().map(|c| c.2).sum();
        ensure!(
            total + 6 == raw.len() as u64,
            "chunk lengths sum to {total} + 6-byte header, datagram is {} bytes",
            raw.len()
        );
    } else {
        ensure!(
            raw.len() == 28 + payload.len(),
            "HEPv2 IPv4 datagram of {} bytes with a {}-byte payload: header is not 28 bytes",
            raw.len(),
            payload.len()
        );
    }

    let call_id = sip_call_id(payload).context("no Call-ID header in the SIP payload")?;
    let corr = s("correlation_id").context("correlation_id should be the payload's Call-ID")?;
    ensure!(
        corr == call_id,
        "correlation_id {corr:?} != payload Call-ID {call_id:?}"
    );
    let label = sip_label(payload).context("cannot classify the SIP payload")?;
    Ok((call_id, hop, label))
}

/// The Call-ID header value of a SIP message (long or compact form), from its headers.
fn sip_call_id(msg: &str) -> Option<String> {
    for line in msg.lines().skip(1) {
        if line.trim().is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        if name.eq_ignore_ascii_case("call-id") || name.eq_ignore_ascii_case("i") {
            return Some(value.trim().to_owned());
        }
    }
    None
}

/// "INVITE", "ACK", … for requests; "<code> <CSeq method>" for responses.
fn sip_label(msg: &str) -> Option<String> {
    let first = msg.lines().next()?;
    if let Some(rest) = first.strip_prefix("SIP/2.0 ") {
        let code = rest.split_whitespace().next()?;
        let cseq = msg.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case("cseq")
                .then(|| v.split_whitespace().nth(1).map(str::to_owned))
                .flatten()
        })?;
        Some(format!("{code} {cseq}"))
    } else {
        first.split_whitespace().next().map(str::to_owned)
    }
}

/// The distinct Call-IDs in a sipp `-trace_msg` file.
fn sipp_call_ids(path: &Path) -> Result<BTreeSet<String>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("read sipp trace {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case("call-id")
                .then(|| v.trim().to_owned())
        })
        .collect())
}

fn to_hex(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(char::from(HEX[usize::from(x >> 4)]));
        s.push(char::from(HEX[usize::from(x & 15)]));
    }
    s
}

fn unix_now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
