//! Test-only helpers shared by hep-user's integration tests and the workspace tests
//! (`hepfwd-tests`); never a dependency of shipped code.
//!
//! - [`netns`]: a network namespace deleted on drop (also when the test panics), running a
//!   closure inside it, `ip` commands, veth pairs, addresses, neighbours and their warm-up.
//! - [`lab`]: the fixed-ifindex lab of the `BPF_PROG_TEST_RUN` tests, optionally with a
//!   sender and a collector namespace.
//! - [`topology`]: the snd -- fwd -- col topology of the end-to-end tests.
//! - [`message`]: [`message::TestMessage`], the HEPv3 test packet builder.
//! - [`privileged`]: skip privileged tests loudly, or fail them under
//!   `HEPFWD_REQUIRE_PRIVILEGED=1`.
//!
//! The network rule: only addresses in 198.18.0.0/15 (and fd00:18::/32), inside namespaces
//! this crate creates; every link lives in one of them, so deleting the namespaces removes
//! the links too.

// Test support code: a panic here is the calling test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod command;
pub mod lab;
pub mod message;
pub mod netns;
pub mod privileged;
pub mod topology;
