//! `spool_record`: the spool's record reader (`hep_user::io::spool::record`) over any bytes,
//! as it reads a segment file at open and during replay.
//!
//! Beyond "no panic": every step stays inside the buffer and moves forward; every record
//! found checks out again and re-encodes to the same bytes; the records found lie before
//! `valid_end`, and cutting the buffer at `valid_end` (what the spool does to a torn tail)
//! keeps every one of them.
#![no_main]

use hep_user::io::spool::record::{self, HEADER_LEN, Parsed, Step};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let summary = record::summarise(data, 0);
    assert!(summary.valid_end <= data.len());

    let mut at = 0;
    let mut records = Vec::new();
    loop {
        match record::step(data, at, true) {
            Step::Record { time_ms, end } => {
                assert!(end > at && end <= data.len());
                let Parsed::Record {
                    payload_len,
                    time_ms: again,
                    total,
                } = record::parse(&data[at..])
                else {
                    panic!("a record found does not parse again");
                };
                assert_eq!(
                    (again, at + total, total - HEADER_LEN),
                    (time_ms, end, payload_len)
                );
                let mut encoded = Vec::new();
                record::encode(&data[at + HEADER_LEN..end], time_ms, &mut encoded);
                assert_eq!(encoded, &data[at..end], "a record re-encodes to its bytes");
                records.push((at, end));
                at = end;
            }
            Step::Corrupt { resume } => {
                assert!(resume > at && resume <= data.len());
                at = resume;
            }
            Step::Stop => break,
        }
    }
    assert_eq!(records.len() as u64, summary.records);
    assert!(
        records
            .last()
            .is_none_or(|&(_, end)| end == summary.valid_end)
    );

    let cut = record::summarise(&data[..summary.valid_end], 0);
    assert_eq!(
        cut.records, summary.records,
        "the truncated tail held no record"
    );
    assert_eq!(cut.valid_end, summary.valid_end);

    // Any start offset: bounded, no panic.
    if let Some(&first) = data.first() {
        let start = usize::from(first) % (data.len() + 1);
        let from = record::summarise(data, start);
        assert!(from.valid_end >= start.min(data.len()) && from.valid_end <= data.len());
    }
});
