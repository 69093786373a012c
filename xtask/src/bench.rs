//! `cargo xtask bench`: not built yet.

use anyhow::{Result, bail};

/// Reports that the benchmarks do not exist yet; always an error, never made-up numbers.
pub fn run() -> Result<()> {
    bail!(
        "`cargo xtask bench` is not built yet: the XDP fast path and its BPF_PROG_TEST_RUN \
         live-frames benchmark come with a later issue. No numbers were measured."
    )
}
