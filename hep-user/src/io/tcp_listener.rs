//! TCP listeners: HEPv3 frames cut by the stream framer, processed by the engine, one task
//! per connection. Garbage on a connection is counted and closes it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use arc_swap::ArcSwap;
use futures_util::StreamExt as _;
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;

use super::accept::AcceptLoop;
use super::framer::{FrameCodecError, HepFrameCodec};
use super::output::Flusher;
use crate::admin::stats::parse_error_index;
use crate::engine::{Engine, Outbox, WorkerCtx};

/// A running TCP listener.
pub struct TcpListener {
    /// The address it listens on.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpListener {
    /// Binds `addr` (SO_REUSEADDR, listen backlog `backlog`) and accepts connections in a
    /// task.
    pub fn start(
        addr: SocketAddr,
        backlog: u32,
        engine: Arc<ArcSwap<Engine>>,
    ) -> std::io::Result<Self> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let lis = socket.listen(backlog)?;
        let bound = lis.local_addr()?;
        let mut accepts = AcceptLoop::new(lis, format!("HEP TCP listener {bound}"));
        let task = tokio::spawn(async move {
            loop {
                let (stream, from) = accepts.accept().await;
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(addr, stream, from, engine.clone()));
            }
        });
        Ok(TcpListener { addr: bound, task })
    }

    /// Stops accepting (open connections end when their peers close them).
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn connection(
    configured: SocketAddr,
    stream: tokio::net::TcpStream,
    from: SocketAddr,
    engine: Arc<ArcSwap<Engine>>,
) {
    let mut frames = FramedRead::new(
        stream,
        HepFrameCodec::new(hep_common::framing::MAX_FRAME_LEN),
    );
    let mut ctx = WorkerCtx::new();
    let mut out = Outbox::new();
    let mut flusher = Flusher::new();
    {
        let eng = engine.load();
        if let Some(idx) = eng
            .plan
            .listeners
            .iter()
            .position(|l| l.tcp == Some(configured))
            && let Some(stats) = eng.listener_stats(idx)
        {
            stats.tcp_connections.fetch_add(1, Relaxed);
        }
    }
    while let Some(item) = frames.next().await {
        let eng = engine.load_full();
        let Some(idx) = eng
            .plan
            .listeners
            .iter()
            .position(|l| l.tcp == Some(configured))
        else {
            return;
        };
        let Some(stats) = eng.listener_stats(idx) else {
            return;
        };
        match item {
            Ok(frame) => {
                stats.received_tcp.fetch_add(1, Relaxed);
                eng.process(&mut ctx, idx, from, &frame, &mut out);
                // Batch the whole frames already buffered; send before waiting for more.
                let buffered = frames.read_buffer();
                if !matches!(
                    hep_common::framing::frame_len(buffered, hep_common::framing::MAX_FRAME_LEN),
                    Ok(Some(_))
                ) {
                    flusher.flush(&eng, &mut out);
                }
            }
            Err(FrameCodecError::Frame(e)) => {
                stats.parse_errors[parse_error_index("tcp_framing")].fetch_add(1, Relaxed);
                tracing::info!(%from, error = %e, "closing a TCP connection that is not HEPv3");
                break;
            }
            Err(FrameCodecError::Io(e)) => {
                tracing::debug!(%from, error = %e, "TCP connection failed");
                break;
            }
        }
    }
    let eng = engine.load_full();
    flusher.flush(&eng, &mut out);
}
