//! Link options of the eBPF program, for bpf-linker (only when building for the BPF target;
//! the host build of this crate is a stub binary and gets none).
//!
//! - `--disable-expand-memcpy-in-order`: bpf-linker otherwise passes LLVM
//!   `--bpf-expand-memcpy-in-order`, which also stops LLVM from expanding small `memset`s
//!   inline: every zeroed struct or IPv4-mapped address became a BPF-to-BPF call to a
//!   byte-at-a-time `memset` (a call costs ~8 ns on the project's machines,
//!   `../shared/XDP-COST.md` §1).
//!
//! Tried and left out (2026-11-30): a newer instruction set. `--cpu` cannot be given here
//! (rustc already passes `--cpu generic` from the target, and aya-build owns the
//! rustflags that could change it); `--cpu-features=+alu32` without jmp32 miscompiled a
//! comparison with `u32::MAX` (the `BPF_PROG_TEST_RUN` rows of `xdp_routes` caught it), and
//! `+allows-misaligned-mem-access` makes LLVM emit misaligned stack accesses, which the
//! verifier rejects (`hep_mirror`).
//!
//! These are link arguments, not rustflags: aya-build sets `CARGO_ENCODED_RUSTFLAGS` for
//! the nested build, which replaces any rustflags we could configure.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "bpf") {
        println!("cargo::rustc-link-arg-bins=--disable-expand-memcpy-in-order");
    }
}
