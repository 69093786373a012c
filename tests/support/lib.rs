//! Shared helpers for the workspace-level integration tests.
pub mod collector;
pub mod daemon;
pub mod hepfwd;
pub mod hepgen;
pub mod metrics;
pub mod netns;
pub mod peers;
pub mod privileged;
