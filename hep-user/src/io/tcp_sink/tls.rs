//! TLS for a TCP destination (`transport = "tls"`), chosen at connect time.
//!
//! The handshake runs through tokio-rustls on the new `TcpStream`; the stream is then taken
//! back from it, with the session (a rustls `ClientConnection`), and the sink goes on
//! exactly as for plain TCP, writing *wire bytes* on the socket: a [`Wire`] turns each
//! frame into the bytes that go on the wire (itself, or its TLS records) as the batch is
//! filled. So the acknowledgement accounting stays the same: each frame is recorded with
//! the wire offset of its last byte, and it is acknowledged when the collector's TCP
//! acknowledged that many bytes (`SIOCOUTQ`). Each frame is its own TLS record(s) (a
//! record ends with its frame), so a frame counted as acknowledged reached the collector
//! whole and decryptable. After a reset the frames not acknowledged are encrypted again in
//! the next connection's session.
//!
//! The collector's TLS records (a TLS 1.3 session ticket, a close_notify) are read from the
//! socket and discarded like any bytes a collector sends: the sink only needs to learn that
//! the connection ended.

use std::io::{self, Write as _};
use std::sync::Arc;

use rustls::ClientConnection;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::tls::HandshakeFailure;

/// How long a TLS handshake with a destination may take.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a TLS destination connects with: swapped by a reload (new connections use it).
#[derive(Debug, Clone)]
pub struct SinkTls {
    /// Trust anchors and the optional client certificate.
    pub config: Arc<rustls::ClientConfig>,
    /// The name the collector's certificate must carry.
    pub server_name: ServerName<'static>,
}

/// How frames go on one connection's wire.
pub(super) enum Wire {
    /// As they are.
    Plain,
    /// As TLS records of this session.
    Tls(Box<ClientConnection>),
}

impl Wire {
    /// Appends `frame`, as it goes on the wire, to `out`; returns how many bytes that is.
    pub(super) fn encode(&mut self, frame: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Wire::Plain => {
                out.extend_from_slice(frame);
                Ok(frame.len())
            }
            Wire::Tls(session) => {
                let before = out.len();
                session.writer().write_all(frame)?;
                while session.wants_write() {
                    session.write_tls(out)?;
                }
                Ok(out.len() - before)
            }
        }
    }

    /// Ends the session politely before the sink closes its side: a TLS close_notify,
    /// written if the socket takes it at once (best effort: the frames are all
    /// acknowledged already).
    pub(super) fn close(&mut self, stream: &TcpStream) {
        if let Wire::Tls(session) = self {
            session.send_close_notify();
            let mut alert = Vec::new();
            while session.wants_write() {
                if session.write_tls(&mut alert).is_err() {
                    return;
                }
            }
            let _ = stream.try_write(&alert);
        }
    }
}

/// Why a TLS handshake failed: the counter's reason and the text for the log.
pub(super) struct HandshakeError {
    pub(super) failure: HandshakeFailure,
    pub(super) message: String,
}

/// Runs the TLS handshake on `stream` (at most [`HANDSHAKE_TIMEOUT`]); on success hands
/// back the stream and the session.
pub(super) async fn handshake(
    stream: TcpStream,
    tls: &SinkTls,
) -> Result<(TcpStream, Wire), HandshakeError> {
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
    match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        connector.connect(tls.server_name.clone(), stream),
    )
    .await
    {
        Ok(Ok(stream)) => {
            let (stream, mut session) = stream.into_inner();
            // Every frame is drained out of the session as it is encoded: no limit needed
            // (and none may cut a frame short).
            session.set_buffer_limit(None);
            Ok((stream, Wire::Tls(Box::new(session))))
        }
        Ok(Err(error)) => Err(HandshakeError {
            failure: HandshakeFailure::of(&error),
            message: format!("TLS handshake failed: {error}"),
        }),
        Err(_) => Err(HandshakeError {
            failure: HandshakeFailure::Timeout,
            message: format!("TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}"),
        }),
    }
}

#[cfg(test)]
mod tests;
