//! The XDP data plane's userspace side: load the `hep_xdp` program embedded in the binary,
//! attach it to interfaces, read its counters, drain its logs.
//!
//! - [`loader`]: [`XdpProgram`] — load (with the HEP port), attach/detach by interface
//!   name through bpf_link, the aya-log drain task.
//! - [`compile`]: the configuration compiled into the kernel route tables, with where
//!   each route runs and why (`hepfwd check-config --plan`).
//! - [`counters`]: [`XdpCounters`] — the per-CPU counters summed.
//! - [`tables`]: install compiled tables (one bank flip per configuration).
//! - [`mirror`]: the TC program that copies marked packets to every mirror target.
//! - [`next_hop`]: the next-hop cache's generation and the netlink listener that
//!   invalidates it.
//! - [`dataplane`]: [`dataplane::DataPlane`] — all of it as the daemon runs it, and the
//!   choice of data path for `--mode`.
//! - [`error`]: [`XdpError`] — what went wrong, in words an operator can act on.
//!
//! The kernel side is `hep-ebpf`; the map and counter layout they share is
//! `hep_common::abi`.
//!
//! ```no_run
//! # fn main() -> Result<(), hep_user::xdp::XdpError> {
//! use hep_user::xdp::{AttachMode, LoadOptions, XdpProgram};
//! use hep_common::abi::XdpCounter;
//!
//! let mut xdp = XdpProgram::load(&LoadOptions::default())?;
//! xdp.attach("eth0", AttachMode::Native)?;
//! let c = xdp.counters()?;
//! println!("HEPv3 packets seen: {}", c.get(XdpCounter::HepV3));
//! # Ok(()) }
//! ```

pub mod compile;
pub mod counters;
pub mod dataplane;
pub mod error;
pub mod loader;
pub mod mirror;
pub mod next_hop;
pub mod tables;

pub use counters::XdpCounters;
pub use error::XdpError;
pub use loader::{AttachMode, LoadOptions, OBJECT, XdpProgram, built_with_xdp};
