//! Byte movement: batched UDP, TCP in and out, the output flusher, capture files.

pub mod accept;
pub mod capture;
pub mod framer;
pub mod output;
pub mod spool;
pub mod tcp_listener;
pub mod tcp_sink;
pub mod udp_batch;
pub mod udp_listener;
