//! Shared helpers for the workspace-level integration tests.
// Test support code: a panic here is the calling test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
pub mod collector;
pub mod daemon;
pub mod hepfwd;
pub mod hepgen;
pub mod metrics;
pub mod netns;
pub mod peers;

/// Skipping privileged tests loudly (moved to the shared harness crate).
pub use hepfwd_harness::privileged;
