//! Byte movement: TCP stream framing, capture files.

pub mod capture;
pub mod framer;
