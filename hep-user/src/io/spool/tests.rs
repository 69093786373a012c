#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed unwrap is a failed assertion

use super::record::{self, HEADER_LEN, Parsed, Step};
use super::*;
use proptest::prelude::*;

/// A 100-byte payload numbered `n` (its first 8 bytes), so order and gaps show.
fn frame(n: u64) -> Vec<u8> {
    let mut f = vec![0xabu8; 100];
    f[..8].copy_from_slice(&n.to_be_bytes());
    f
}

fn number(f: &[u8]) -> u64 {
    u64::from_be_bytes(f[..8].try_into().unwrap())
}

/// Records of 120 bytes (20 + 100); segments close at 1200 bytes = 10 records; 4800 bytes
/// at most = 4 segments = 40 records.
fn small(dir: &Path, on_full: OnFull) -> SpoolOptions {
    SpoolOptions {
        dir: dir.to_path_buf(),
        max_bytes: 4800,
        sync: Duration::from_secs(1),
        on_full,
        segment_bytes: 1200,
    }
}

fn read_all(spool: &mut Spool) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let got = spool.read(7, 1 << 20).unwrap();
        if got.is_empty() {
            return out;
        }
        out.extend(got.iter().map(|f| number(f)));
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

#[test]
fn round_trip_across_segments_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut spool, recovery) = Spool::open(small(tmp.path(), OnFull::DropNewest)).unwrap();
    assert_eq!(recovery, Recovery::default());
    for n in 0..35 {
        assert_eq!(
            spool.append(&frame(n)).unwrap(),
            Appended::Stored { dropped_oldest: 0 }
        );
    }
    // 35 records of 10 per segment: 4 files.
    assert_eq!(segment_files(tmp.path()).len(), 4);
    assert_eq!(spool.frames(), 35);
    assert_eq!(spool.bytes(), 35 * 120);
    assert_eq!(read_all(&mut spool), (0..35).collect::<Vec<_>>());
    assert_eq!(spool.unread_frames(), 0);
    spool.consume(35).unwrap();
    assert!(spool.is_empty());
    // Consumed segments are deleted; the one written to stays.
    assert_eq!(segment_files(tmp.path()).len(), 1);
}

#[test]
fn rewind_reads_the_unconsumed_frames_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(small(tmp.path(), OnFull::DropNewest)).unwrap();
    for n in 0..15 {
        spool.append(&frame(n)).unwrap();
    }
    let first: Vec<u64> = spool
        .read(6, 1 << 20)
        .unwrap()
        .iter()
        .map(|f| number(f))
        .collect();
    assert_eq!(first, vec![0, 1, 2, 3, 4, 5]);
    spool.consume(4).unwrap();
    spool.rewind();
    assert_eq!(read_all(&mut spool), (4..15).collect::<Vec<_>>());
}

#[test]
fn restart_resumes_after_the_synced_position() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (mut spool, _) = Spool::open(small(tmp.path(), OnFull::DropNewest)).unwrap();
        for n in 0..25 {
            spool.append(&frame(n)).unwrap();
        }
        spool.read(12, 1 << 20).unwrap();
        spool.consume(12).unwrap();
        spool.sync().unwrap();
        // Consumed after the last sync: not saved, so sent again after a restart.
        spool.read(3, 1 << 20).unwrap();
        spool.consume(3).unwrap();
    }
    let (mut spool, recovery) = Spool::open(small(tmp.path(), OnFull::DropNewest)).unwrap();
    assert_eq!(recovery.frames, 13);
    assert_eq!(recovery.corrupt_skipped, 0);
    assert_eq!(recovery.truncated_bytes, 0);
    assert_eq!(read_all(&mut spool), (12..25).collect::<Vec<_>>());
    // Appending goes on after the old frames.
    spool.append(&frame(25)).unwrap();
    assert_eq!(read_all(&mut spool), vec![25]);
}

#[test]
fn torn_tail_is_truncated_and_the_rest_kept() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (mut spool, _) = Spool::open(small(tmp.path(), OnFull::DropNewest)).unwrap();
        for n in 0..13 {
            spool.append(&frame(n)).unwrap();
        }
    }
    // A write cut by a crash: half a record at the end of the newest segment.
    let newest = segment_files(tmp.path()).pop().unwrap();
    let mut record_bytes = Vec::new();
    record::encode(&frame(13), 1, &mut record_bytes);
    let mut f = OpenOptions::new().append(true).open(&newest).unwrap();
    f.write_all(&record_bytes[..70]).unwrap();
    drop(f);
    assert_eq!(fs::metadata(&newest).unwrap().len(), 3 * 120 + 70);

    let (mut spool, recovery) = Spool::open(small(tmp.path(), OnFull::DropNewest)).unwrap();
    assert_eq!(recovery.truncated_bytes, 70);
    assert_eq!(recovery.corrupt_skipped, 0);
    assert_eq!(recovery.frames, 13);
    assert_eq!(fs::metadata(&newest).unwrap().len(), 3 * 120);
    spool.append(&frame(13)).unwrap();
    assert_eq!(read_all(&mut spool), (0..14).collect::<Vec<_>>());
}

#[test]
fn corrupt_record_in_the_middle_is_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (mut spool, _) = Spool::open(small(tmp.path(), OnFull::DropNewest)).unwrap();
        for n in 0..25 {
            spool.append(&frame(n)).unwrap();
        }
    }
    // Flip a payload byte of record 4 (first segment) and the magic of record 12 (second).
    let files = segment_files(tmp.path());
    let mut first = fs::read(&files[0]).unwrap();
    first[4 * 120 + HEADER_LEN + 50] ^= 0xff;
    fs::write(&files[0], &first).unwrap();
    let mut second = fs::read(&files[1]).unwrap();
    second[2 * 120] ^= 0x01;
    fs::write(&files[1], &second).unwrap();

    let (mut spool, recovery) = Spool::open(small(tmp.path(), OnFull::DropNewest)).unwrap();
    assert_eq!(recovery.corrupt_skipped, 2);
    assert_eq!(recovery.truncated_bytes, 0);
    assert_eq!(recovery.frames, 23);
    let expected: Vec<u64> = (0..25).filter(|n| *n != 4 && *n != 12).collect();
    assert_eq!(read_all(&mut spool), expected);
}

#[test]
fn full_with_drop_oldest_deletes_the_oldest_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(small(tmp.path(), OnFull::DropOldest)).unwrap();
    for n in 0..40 {
        assert_eq!(
            spool.append(&frame(n)).unwrap(),
            Appended::Stored { dropped_oldest: 0 }
        );
    }
    // The 41st record would make 4920 bytes > 4800: segment 1 (frames 0..10) goes.
    assert_eq!(
        spool.append(&frame(40)).unwrap(),
        Appended::Stored { dropped_oldest: 10 }
    );
    assert_eq!(spool.frames(), 31);
    assert!(spool.bytes() <= 4800);
    assert_eq!(read_all(&mut spool), (10..41).collect::<Vec<_>>());
}

#[test]
fn full_with_drop_newest_refuses_the_new_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(small(tmp.path(), OnFull::DropNewest)).unwrap();
    for n in 0..40 {
        spool.append(&frame(n)).unwrap();
    }
    assert_eq!(
        spool.append(&frame(40)).unwrap(),
        Appended::Refused { dropped_oldest: 0 }
    );
    assert_eq!(spool.frames(), 40);
    assert_eq!(read_all(&mut spool), (0..40).collect::<Vec<_>>());
    // Room again once frames are consumed.
    spool.consume(10).unwrap();
    assert_eq!(
        spool.append(&frame(41)).unwrap(),
        Appended::Stored { dropped_oldest: 0 }
    );
}

#[test]
fn drop_oldest_keeps_frames_being_replayed() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(small(tmp.path(), OnFull::DropOldest)).unwrap();
    for n in 0..40 {
        spool.append(&frame(n)).unwrap();
    }
    // Frames 0..3 are on the wire: their segment cannot go, so the new frame is refused.
    spool.read(3, 1 << 20).unwrap();
    assert_eq!(
        spool.append(&frame(40)).unwrap(),
        Appended::Refused { dropped_oldest: 0 }
    );
    spool.rewind();
    assert_eq!(read_all(&mut spool), (0..40).collect::<Vec<_>>());
}

#[test]
fn a_spool_directory_is_opened_once_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(small(tmp.path(), OnFull::DropOldest)).unwrap();
    assert!(matches!(
        Spool::open(small(tmp.path(), OnFull::DropOldest)),
        Err(SpoolError::Locked(_))
    ));
    drop(spool);
    assert!(Spool::open(small(tmp.path(), OnFull::DropOldest)).is_ok());
}

#[test]
fn oversized_and_empty_frames_are_errors_not_records() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(small(tmp.path(), OnFull::DropOldest)).unwrap();
    assert!(matches!(spool.append(&[]), Err(SpoolError::BadFrame(0))));
    assert!(matches!(
        spool.append(&vec![0u8; 65_536]),
        Err(SpoolError::BadFrame(65_536))
    ));
    assert!(spool.is_empty());
}

#[test]
fn garbage_files_and_position_do_not_panic() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(
        tmp.path().join("00000000000000000001.seg"),
        b"HSPLHSPL\xff\xff\xff\xff garbage",
    )
    .unwrap();
    fs::write(tmp.path().join("position"), b"nonsense").unwrap();
    fs::write(tmp.path().join("notes.txt"), b"not a segment").unwrap();
    let (mut spool, recovery) = Spool::open(small(tmp.path(), OnFull::DropOldest)).unwrap();
    assert_eq!(recovery.frames, 0);
    assert!(recovery.truncated_bytes > 0);
    spool.append(&frame(7)).unwrap();
    assert_eq!(read_all(&mut spool), vec![7]);
}

/// A tmpfs of 256 KiB with a spool of 1 GiB: the disk fills first. The failed write is cut
/// back and the spool stays readable, with every frame it stored.
#[test]
fn disk_full_write_is_cut_back_and_the_spool_stays_readable() {
    if !hepfwd_harness::privileged::available("disk_full_write_is_cut_back") {
        return;
    }
    let mount = TmpfsGuard::mount("256k");
    let dir = mount.path().join("d");
    let options = SpoolOptions::new(
        dir.clone(),
        DEFAULT_MAX_BYTES,
        DEFAULT_SYNC,
        OnFull::DropOldest,
    );
    let (mut spool, _) = Spool::open(options.clone()).unwrap();
    let big = |n: u64| {
        let mut f = vec![0x5au8; 1000];
        f[..8].copy_from_slice(&n.to_be_bytes());
        f
    };
    let (mut stored, mut refused) = (0u64, 0u64);
    for n in 0..400 {
        match spool.append(&big(n)).unwrap() {
            Appended::Stored { dropped_oldest } => {
                assert_eq!(dropped_oldest, 0);
                assert_eq!(stored, n, "a frame was stored after one was refused");
                stored += 1;
            }
            Appended::Refused { .. } => refused += 1,
        }
    }
    assert!(
        stored > 100 && refused > 0,
        "stored {stored}, refused {refused}"
    );
    // Every file ends on a record: size = records × 1020.
    let on_disk: u64 = segment_files(&dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(on_disk, stored * 1020);
    drop(spool);
    let (mut spool, recovery) = Spool::open(options).unwrap();
    assert_eq!(recovery.frames, stored);
    assert_eq!(recovery.truncated_bytes, 0);
    assert_eq!(read_all(&mut spool), (0..stored).collect::<Vec<_>>());
}

/// A tmpfs mounted on a fresh directory, unmounted on drop (even when the test fails).
pub(crate) struct TmpfsGuard {
    dir: tempfile::TempDir,
}

impl TmpfsGuard {
    pub(crate) fn mount(size: &str) -> TmpfsGuard {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs failed: {status}");
        TmpfsGuard { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn record_reader_pinned_cases() {
    let mut buf = Vec::new();
    record::encode(b"abc", 42, &mut buf);
    assert_eq!(buf.len(), HEADER_LEN + 3);
    assert_eq!(&buf[..4], b"HSPL");
    assert_eq!(
        record::parse(&buf),
        Parsed::Record {
            payload_len: 3,
            time_ms: 42,
            total: 23
        }
    );
    assert_eq!(record::parse(&buf[..10]), Parsed::Short);
    assert_eq!(record::parse(&buf[..2]), Parsed::Short);
    assert_eq!(record::parse(b"XX"), Parsed::Invalid);
    let mut bad = buf.clone();
    bad[21] ^= 1;
    assert_eq!(record::parse(&bad), Parsed::Invalid);
    // Garbage, then a record: skipped to it.
    let mut stream = b"garbage!".to_vec();
    stream.extend_from_slice(&buf);
    assert_eq!(record::step(&stream, 0, true), Step::Corrupt { resume: 8 });
    assert_eq!(
        record::step(&stream, 8, true),
        Step::Record {
            time_ms: 42,
            end: 31
        }
    );
    assert_eq!(record::step(&stream, 31, true), Step::Stop);
}

proptest! {
    /// Whatever the bytes, reading a segment ends, stays inside it, and finds at least the
    /// records that were encoded intact after the damage.
    #[test]
    fn summarise_never_panics_and_finds_intact_records(
        noise in proptest::collection::vec(any::<u8>(), 0..300),
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..200), 0..8),
    ) {
        let mut buf = noise.clone();
        for p in &payloads {
            record::encode(p, 7, &mut buf);
        }
        let summary = record::summarise(&buf, 0);
        prop_assert!(summary.valid_end <= buf.len());
        prop_assert!(summary.records >= payloads.len() as u64);
        if !payloads.is_empty() {
            prop_assert_eq!(summary.valid_end, buf.len());
        }
        let _ = record::summarise(&noise, 0);
    }
}
