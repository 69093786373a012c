//! The tap: what one route forwards, live, for debugging a routing rule without tcpdump
//! (`GET /tap?route=NAME` on the admin server, `hepfwd tap`). Off unless `[admin] tap =
//! true`; bounded everywhere: at most [`MAX_TAPS`] at once, [`TAP_QUEUE`] packets queued
//! per tap (more are counted as dropped, never waited for), a packet count and a duration
//! per tap. The engine pays one relaxed atomic load per routed packet while no tap is open
//! on the route.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::stats::RouteStats;

/// Taps open at once, at most.
pub const MAX_TAPS: usize = 4;
/// Packets queued per tap before it drops (counted).
pub const TAP_QUEUE: usize = 1024;
/// The most packets one tap shows.
pub const MAX_COUNT: u64 = 10_000;
/// The longest a tap stays open, in seconds.
pub const MAX_SECONDS: u64 = 3600;

/// One packet a route forwarded.
#[derive(Debug, Clone)]
pub struct TapEvent {
    /// The packet as forwarded (after the route's rewrite; before a destination's
    /// conversion or `set_auth_key`).
    pub packet: Bytes,
    /// The destinations it went to.
    pub destinations: Vec<String>,
}

#[derive(Debug)]
struct Subscriber {
    id: u64,
    route: String,
    tx: mpsc::Sender<TapEvent>,
    dropped: Arc<AtomicU64>,
}

/// The open taps.
#[derive(Debug, Default)]
pub struct TapHub {
    enabled: AtomicBool,
    next_id: AtomicU64,
    subscribers: Mutex<Vec<Subscriber>>,
}

/// Why a tap cannot open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TapError {
    /// `[admin] tap` is off.
    #[error("the tap is off: set `tap = true` in [admin] and reload")]
    Disabled,
    /// [`MAX_TAPS`] are open.
    #[error("{MAX_TAPS} taps are open already")]
    Busy,
}

/// An open tap: its packets, and its registration (closed on drop).
pub struct Tap {
    /// Packets, as the route forwards them.
    pub events: mpsc::Receiver<TapEvent>,
    /// Packets this tap missed because its queue was full.
    pub dropped: Arc<AtomicU64>,
    hub: Arc<TapHub>,
    route: Arc<RouteStats>,
    id: u64,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.route.taps.fetch_sub(1, Relaxed);
        if let Ok(mut subs) = self.hub.subscribers.lock() {
            subs.retain(|s| s.id != self.id);
        }
    }
}

impl TapHub {
    /// Turns the tap on or off (`[admin] tap`; a reload applies it to new taps).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Relaxed);
    }

    /// Opens a tap on the route `name` whose counters are `route`.
    pub fn open(self: &Arc<Self>, name: &str, route: Arc<RouteStats>) -> Result<Tap, TapError> {
        if !self.enabled.load(Relaxed) {
            return Err(TapError::Disabled);
        }
        let (tx, events) = mpsc::channel(TAP_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let id = self.next_id.fetch_add(1, Relaxed);
        {
            let mut subs = self.subscribers.lock().map_err(|_| TapError::Busy)?;
            if subs.len() >= MAX_TAPS {
                return Err(TapError::Busy);
            }
            subs.push(Subscriber {
                id,
                route: name.to_string(),
                tx,
                dropped: dropped.clone(),
            });
        }
        route.taps.fetch_add(1, Relaxed);
        Ok(Tap {
            events,
            dropped,
            hub: self.clone(),
            route,
            id,
        })
    }

    /// Hands a copy of `packet`, forwarded by route `name` to `destinations`, to every tap
    /// open on it; never blocks (a full tap counts a drop).
    pub fn publish(&self, name: &str, packet: &[u8], destinations: &[&str]) {
        let Ok(subs) = self.subscribers.lock() else {
            return;
        };
        for s in subs.iter().filter(|s| s.route == name) {
            let event = TapEvent {
                packet: Bytes::copy_from_slice(packet),
                destinations: destinations.iter().map(|d| (*d).to_string()).collect(),
            };
            if s.tx.try_send(event).is_err() {
                s.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed unwrap is a failed assertion

    use super::*;

    #[test]
    fn off_bounded_in_taps_and_in_queue_and_closed_on_drop() {
        let hub = Arc::new(TapHub::default());
        let route = Arc::new(RouteStats::default());
        assert_eq!(hub.open("r", route.clone()).err(), Some(TapError::Disabled));
        hub.set_enabled(true);
        let mut taps: Vec<Tap> = (0..MAX_TAPS)
            .map(|_| hub.open("r", route.clone()).unwrap())
            .collect();
        assert_eq!(hub.open("r", route.clone()).err(), Some(TapError::Busy));
        assert_eq!(route.taps.load(Relaxed), MAX_TAPS as u32);
        // Another route's packets are not shown; a full queue counts drops.
        hub.publish("other", b"x", &["a"]);
        for _ in 0..TAP_QUEUE + 5 {
            hub.publish("r", b"p", &["a", "b"]);
        }
        let t = &mut taps[0];
        let first = t.events.try_recv().unwrap();
        assert_eq!(
            (&first.packet[..], first.destinations.len()),
            (&b"p"[..], 2)
        );
        assert_eq!(t.dropped.load(Relaxed), 5);
        taps.clear();
        assert_eq!(route.taps.load(Relaxed), 0);
        assert!(hub.subscribers.lock().unwrap().is_empty());
        assert!(hub.open("r", route).is_ok());
    }
}
