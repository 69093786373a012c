//! The disk spool of a TCP destination, end to end on 127.0.0.1 with the built daemon: a
//! collector outage under load (every frame once, in order), kill -9 of the daemon during
//! an outage (every spooled frame delivered after the restart), a full disk (a 2 MiB
//! tmpfs: drops counted, the daemon running, the spool readable), a corrupted segment at
//! start (the rest delivered, the damage counted).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed unwrap is a failed assertion

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hepfwd_tests::collector::{Agent, TcpCollector, WAIT};
use hepfwd_tests::daemon::{Daemon, LO, ONE_WORKER, free_port_v4, udp_listener};
use hepfwd_tests::hepgen::Pkt;
use hepfwd_tests::peers::TestDir;
use hepfwd_tests::privileged;

const DEST: [(&str, &str); 1] = [("destination", "t")];

/// A TCP destination `t` at `addr` with a spool in `dir`, and `extra` spool keys.
fn config(
    addr: SocketAddr,
    dir: &Path,
    extra: &str,
) -> impl Fn(&hepfwd_tests::daemon::Ports) -> String {
    let dir = dir.display().to_string();
    let extra = extra.to_string();
    move |p| {
        udp_listener(p)
            + &format!(
                "\n[[destination]]\nname = \"t\"\naddress = \"{addr}\"\ntransport = \"tcp\"\nspool = {{ dir = \"{dir}\"{extra} }}\n"
            )
            + "\n[default]\nforward = [\"t\"]\n"
            + ONE_WORKER
    }
}

/// Packet `i`: a SIP message whose call id and CSeq carry `i`, so order and gaps show.
fn packets(range: std::ops::Range<u32>, pad: usize) -> Vec<Vec<u8>> {
    range
        .map(|i| Pkt::sip(&format!("spool-{i:06}{}", "x".repeat(pad)), i).encode())
        .collect()
}

/// Sends `packets` at about `per_second` (bursts every 10 ms), checking the daemon counted
/// each one received before the next burst gets far ahead.
fn send_at(d: &Daemon, agent: &Agent, packets: &[Vec<u8>], per_second: usize) {
    let burst = (per_second / 100).max(1);
    let start = Instant::now();
    for (n, chunk) in packets.chunks(burst).enumerate() {
        for p in chunk {
            agent.send(d.listen(), p);
        }
        let due = start + Duration::from_millis(10 * (n as u64 + 1));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// Waits until the daemon counted `n` datagrams received (all that were sent).
fn wait_received(d: &Daemon, n: u64) {
    d.wait_counter("hepfwd_received_total", &[("listener", "agents")], n, WAIT);
}

/// The first mismatch between what arrived and what was expected, for the message.
fn first_difference(got: &[Vec<u8>], want: &[Vec<u8>]) -> String {
    let at = got.iter().zip(want).position(|(a, b)| a != b);
    format!(
        "got {} frames, want {}; first difference at {:?}",
        got.len(),
        want.len(),
        at
    )
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// Collector down for about 10 s while 2,000 packets/s arrive: every packet is delivered
/// once and in order after it returns; the counters add up.
#[test]
fn outage_under_load_delivers_every_frame_once_in_order() {
    let spool = TestDir::new("spool-outage").unwrap();
    let collector = TcpCollector::new("collector");
    let addr = collector.addr;
    let d = Daemon::start("spool-outage", config(addr, spool.path(), ""));
    d.wait_counter("hepfwd_destination_connected", &DEST, 1, WAIT);
    let agent = Agent::new();

    let before = packets(0..500, 0);
    send_at(&d, &agent, &before, 2000);
    let got = collector.take(before.len(), WAIT);
    assert!(got == before, "{}", first_difference(&got, &before));

    assert!(collector.stop().is_empty());
    d.wait_counter("hepfwd_destination_connected", &DEST, 0, WAIT);
    let during = packets(500..20_500, 0);
    send_at(&d, &agent, &during, 2000);
    wait_received(&d, 20_500);
    d.wait_counter("hepfwd_destination_spooled_total", &DEST, 20_000, WAIT);
    let (code, health) = d.health();
    assert_eq!(code, 503);
    assert_eq!(health["destinations"]["t"]["spooling"], true, "{health}");
    // sent + dropped + queue_depth + spool_frames = routed (nothing was in the spool at
    // start).
    let m = d.metrics();
    let accounted = m.get("hepfwd_destination_sent_total", &DEST)
        + m.get("hepfwd_destination_dropped_total", &DEST)
        + m.get("hepfwd_destination_queue_depth", &DEST)
        + m.get("hepfwd_destination_spool_frames", &DEST);
    assert_eq!(accounted, 20_500);
    assert_eq!(m.get("hepfwd_destination_spool_frames", &DEST), 20_000);
    assert!(m.get("hepfwd_destination_spool_bytes", &DEST) > 20_000 * 20);

    let collector = TcpCollector::bind("collector-again", addr);
    let got = collector.take(during.len(), Duration::from_secs(60));
    assert!(got == during, "{}", first_difference(&got, &during));
    collector.expect_silent(Duration::from_millis(500));
    d.wait_counter("hepfwd_destination_spool_frames", &DEST, 0, WAIT);
    let m = d.metrics();
    assert_eq!(m.get("hepfwd_destination_sent_total", &DEST), 20_500);
    assert_eq!(
        m.get("hepfwd_destination_spool_replayed_total", &DEST),
        20_000
    );
    assert_eq!(m.get("hepfwd_destination_dropped_total", &DEST), 0);
    assert_eq!(m.get("hepfwd_destination_queue_depth", &DEST), 0);
    assert_eq!(m.get("hepfwd_destination_spooling", &DEST), 0);
    // After the spool is empty, new traffic takes the memory queue again.
    let after = packets(20_500..20_600, 0);
    send_at(&d, &agent, &after, 2000);
    let got = collector.take(after.len(), WAIT);
    assert!(got == after, "{}", first_difference(&got, &after));
    assert_eq!(d.counter("hepfwd_destination_spooled_total", &DEST), 20_000);
    let (code, _) = d.health();
    assert_eq!(code, 200);
}

/// kill -9 of the daemon while the collector is down: every frame the spool counted before
/// the kill is delivered, in order, by the restarted daemon.
#[test]
fn kill_9_during_an_outage_loses_no_spooled_frame() {
    let spool = TestDir::new("spool-kill").unwrap();
    let addr = SocketAddr::from((LO, free_port_v4()));
    let mut d = Daemon::start("spool-kill", config(addr, spool.path(), ""));
    let agent = Agent::new();
    let sent = packets(0..4000, 0);
    send_at(&d, &agent, &sent, 2000);
    wait_received(&d, 4000);
    d.wait_counter("hepfwd_destination_spooled_total", &DEST, 4000, WAIT);
    let spooled = d.counter("hepfwd_destination_spooled_total", &DEST);
    assert_eq!(spooled, 4000);
    d.signal(libc::SIGKILL);
    let status = d.wait_exit(WAIT).expect("the daemon died");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    drop(d);

    let collector = TcpCollector::bind("collector", addr);
    let d = Daemon::start("spool-kill-again", config(addr, spool.path(), ""));
    let got = collector.take(sent.len(), Duration::from_secs(60));
    assert!(got == sent, "{}", first_difference(&got, &sent));
    collector.expect_silent(Duration::from_millis(500));
    d.wait_counter("hepfwd_destination_spool_frames", &DEST, 0, WAIT);
    let m = d.metrics();
    assert_eq!(
        m.get("hepfwd_destination_spool_recovered_total", &DEST),
        4000
    );
    assert_eq!(
        m.get("hepfwd_destination_spool_replayed_total", &DEST),
        4000
    );
    assert_eq!(
        m.get("hepfwd_destination_spool_corrupt_records_total", &DEST),
        0
    );
}

/// A tmpfs mounted on a fresh directory, unmounted on drop (even when the test fails).
struct Tmpfs {
    dir: TestDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = TestDir::new("spool-tmpfs").unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs: {status}");
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let status = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            eprintln!("umount {} failed: {status:?}", self.dir.path().display());
        }
    }
}

/// The spool on a 2 MiB tmpfs (its `max_bytes` is 1 GiB: the disk fills first) while the
/// collector is down: the daemon keeps running, every packet is either spooled or counted
/// dropped (`spool_full`), and the spooled ones are all delivered, in order, afterwards.
#[test]
fn disk_full_drops_are_counted_and_the_spool_stays_readable() {
    if !privileged::available("disk_full_drops_are_counted_and_the_spool_stays_readable") {
        return;
    }
    let disk = Tmpfs::mount("2m");
    let addr = SocketAddr::from((LO, free_port_v4()));
    let mut d = Daemon::start("spool-full", config(addr, disk.dir.path(), ""));
    let agent = Agent::new();
    // About 5 MB of records: more than twice the disk.
    let sent = packets(0..8000, 400);
    send_at(&d, &agent, &sent, 4000);
    wait_received(&d, 8000);
    let dropped = [("destination", "t"), ("reason", "spool_full")];
    d.wait_for("every packet spooled or dropped", WAIT, |m| {
        m.get("hepfwd_destination_spooled_total", &DEST)
            + m.get("hepfwd_destination_dropped_total", &dropped)
            == 8000
    });
    let m = d.metrics();
    let spooled = m.get("hepfwd_destination_spooled_total", &DEST);
    assert!(spooled > 1000, "spooled {spooled}");
    assert!(m.get("hepfwd_destination_dropped_total", &dropped) > 0);
    assert!(d.running(), "the daemon survived the full disk");
    let (code, _) = d.health();
    assert_eq!(code, 503);

    let collector = TcpCollector::bind("collector", addr);
    let want = &sent[..spooled as usize];
    let got = collector.take(want.len(), Duration::from_secs(60));
    assert!(got == want, "{}", first_difference(&got, want));
    collector.expect_silent(Duration::from_millis(500));
    assert_eq!(
        d.counter("hepfwd_destination_spool_replayed_total", &DEST),
        spooled
    );
    drop(d);
}

/// A spool left by a stopped daemon, damaged before the next start (bytes flipped in one
/// record in the middle, the last record cut short): the other frames are delivered in
/// order and the damage is counted.
#[test]
fn corrupted_segment_at_start_delivers_the_rest_and_counts_the_damage() {
    let spool = TestDir::new("spool-corrupt").unwrap();
    let addr = SocketAddr::from((LO, free_port_v4()));
    let mut d = Daemon::start("spool-corrupt", config(addr, spool.path(), ""));
    let agent = Agent::new();
    let sent = packets(0..300, 0);
    send_at(&d, &agent, &sent, 2000);
    d.wait_counter("hepfwd_destination_spooled_total", &DEST, 300, WAIT);
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(WAIT).is_some_and(|s| s.success()));
    drop(d);

    // Records are a 20-byte header and the frame; all 300 are in one segment.
    let files = segments(&spool.path().join("t"));
    assert_eq!(files.len(), 1);
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let total: usize = sent.iter().map(|p| 20 + p.len()).sum();
    assert_eq!(bytes.len(), total);
    let start_of = |k: usize| -> usize { sent[..k].iter().map(|p| 20 + p.len()).sum() };
    bytes[start_of(100) + 20 + 30] ^= 0xff; // a payload byte of frame 100
    bytes.truncate(total - 10); // frame 299 cut short
    std::fs::write(&files[0], &bytes).unwrap();

    let collector = TcpCollector::bind("collector", addr);
    let d = Daemon::start("spool-corrupt-again", config(addr, spool.path(), ""));
    let want: Vec<Vec<u8>> = sent[..299]
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 100)
        .map(|(_, p)| p.clone())
        .collect();
    let got = collector.take(want.len(), WAIT);
    assert!(got == want, "{}", first_difference(&got, &want));
    collector.expect_silent(Duration::from_millis(500));
    let m = d.metrics();
    assert_eq!(
        m.get("hepfwd_destination_spool_corrupt_records_total", &DEST),
        1
    );
    assert_eq!(
        m.get("hepfwd_destination_spool_recovered_total", &DEST),
        298
    );
    assert!(
        d.stderr().contains("torn or corrupt tail"),
        "the cut tail is logged"
    );
}

/// The read position is saved every 50 ms, so a kill during a replay finds some of it
/// consumed.
const SYNC_OFTEN: &str = ", sync = \"50ms\"";

/// kill -9 of the daemon while it replays its spool to a collector: nothing is lost. The
/// frames the collector got before the kill are the first ones, in order; after the
/// restart the replay starts again at or before the first frame it had not got (frames
/// consumed within the last `sync` are sent again) and runs to the last one, in order.
#[test]
fn kill_9_during_a_replay_sends_again_rather_than_loses() {
    let spool = TestDir::new("spool-kill-replay").unwrap();
    let addr = SocketAddr::from((LO, free_port_v4()));
    let mut d = Daemon::start("spool-kill-replay", config(addr, spool.path(), SYNC_OFTEN));
    let agent = Agent::new();
    let sent = packets(0..20_000, 0);
    send_at(&d, &agent, &sent, 4000);
    wait_received(&d, 20_000);
    d.wait_counter("hepfwd_destination_spooled_total", &DEST, 20_000, WAIT);

    let collector = TcpCollector::bind("collector", addr);
    let mut before = collector.take(2000, WAIT);
    d.signal(libc::SIGKILL);
    assert!(d.wait_exit(WAIT).is_some());
    drop(d);
    before.extend(collector.drain(Duration::from_millis(500)));
    assert!(
        before.len() < sent.len(),
        "the replay ended before the kill: the test proves nothing"
    );
    assert!(
        before == sent[..before.len()],
        "{}",
        first_difference(&before, &sent)
    );

    let d = Daemon::start(
        "spool-kill-replay-again",
        config(addr, spool.path(), SYNC_OFTEN),
    );
    let first = collector.recv(WAIT).expect("the replay resumes");
    let k = sent
        .iter()
        .position(|p| *p == first)
        .expect("a frame that was sent");
    assert!(
        k <= before.len(),
        "frames {} to {k} were lost",
        before.len()
    );
    eprintln!(
        "delivered before the kill: {}; the replay after the restart began at frame {k}",
        before.len()
    );
    let mut after = vec![first];
    after.extend(collector.take(sent.len() - k - 1, Duration::from_secs(60)));
    assert!(
        after == sent[k..],
        "{}",
        first_difference(&after, &sent[k..])
    );
    collector.expect_silent(Duration::from_millis(500));
    d.wait_counter("hepfwd_destination_spool_frames", &DEST, 0, WAIT);
}
