//! hepfwd's XDP program, `hep_xdp`: parse every packet; for HEPv3 to a listener port, read
//! its facts with hep-common's walker, evaluate the route tables the loader compiled from
//! the configuration, then steer, drop, mark for mirroring or pass to the daemon; count
//! every outcome per CPU.
//!
//! The object also holds `hep_steer_min` (`bench_min`), a minimal steer with no HEP parsing:
//! the yardstick of `cargo xtask bench --all`, never loaded by the daemon.
//!
//! Built for `bpfel-unknown-none` by `hep-user/build.rs`. On the host this crate is a stub
//! binary, so that `cargo build --workspace` and `cargo test --workspace` work.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `asm!` for BPF: one misaligned 8-byte packet load (`packet::Packet::load_word`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod bench_min;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod edit;
#[cfg(target_arch = "bpf")]
mod facts;
#[cfg(target_arch = "bpf")]
mod fib;
#[cfg(target_arch = "bpf")]
mod mirror;
#[cfg(target_arch = "bpf")]
mod net;
#[cfg(target_arch = "bpf")]
mod next_hop;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod route;
#[cfg(target_arch = "bpf")]
mod scratch;
#[cfg(target_arch = "bpf")]
mod steer;
#[cfg(target_arch = "bpf")]
mod tables;
#[cfg(target_arch = "bpf")]
mod xdp;

/// The verifier rejects an infinite loop it can reach, so the panic handler must not be the
/// usual `loop {}`. The program has no panicking paths (checked by building: any would pull
/// in `core::panicking`, which the verifier then sees as a call it cannot resolve), so this
/// is unreachable; s2n-quic's XDP program does the same.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: no code path of the program can panic (see above).
    unsafe { core::hint::unreachable_unchecked() }
}

/// The program's license; GPL-compatible so that GPL-only helpers are allowed.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "hep-xdp is an eBPF program: it is built for bpfel-unknown-none by hep-user/build.rs \
         (`cargo xtask build`) and loaded by `hepfwd`; this host binary does nothing."
    );
    std::process::exit(2);
}
