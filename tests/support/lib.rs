//! Shared helpers for the workspace-level integration tests.
pub mod collector;
pub mod daemon;
pub mod hepfwd;
pub mod hepgen;
pub mod metrics;
pub mod netns;
pub mod peers;

/// Skipping privileged tests loudly (moved to the shared harness crate).
pub use hepfwd_harness::privileged;
