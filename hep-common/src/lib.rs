#![no_std]
//! HEP codec shared by the kernel and userspace paths of hepfwd.
//!
//! `no_std`, no allocation, zero-copy. The same walker ([`walker::ChunkWalker`]), validation
//! rules, correlation key and hash ([`correlation`]) run in the XDP program and in the
//! daemon, so the two paths cannot disagree about a packet.
//!
//! - [`version`]: detect HEPv1/v2/v3 and parse any of them.
//! - [`walker`], [`v3`]: validate and read HEPv3; encode it from typed fields.
//! - [`rewrite`]: set and delete chunks; [`inplace`]: the kernel's in-place form of `set`.
//! - [`legacy`]: HEPv1/v2, and conversion to HEPv3.
//! - [`framing`]: HEP over TCP.
//! - [`correlation`]: the correlation key and its hash.
//! - [`select`]: call-sticky destination choice and call sampling.
//! - [`abi`]: the kernel ABI (map and program names, limits, the `repr(C)` tables and
//!   counters), with its layout pinned at compile time.
//! - [`facts`]: a packet's route facts ([`prefix`]: the common agents' first ten chunks
//!   recognised at once); [`eval`]: route evaluation over the tables.
//! - [`chunk`]: chunk ids, value types, protocol type names.

pub mod abi;
pub mod bytes;
pub mod chunk;
pub mod correlation;
pub mod error;
pub mod eval;
pub mod facts;
pub mod framing;
pub mod inplace;
pub mod legacy;
pub mod prefix;
pub mod rewrite;
pub mod select;
pub mod sip;
pub mod v3;
pub mod version;
pub mod walker;

#[cfg(test)]
mod regression_tests;

pub use error::HepError;
pub use v3::{Hep3, Hep3Message};
pub use version::{HepPacket, HepVersion};
