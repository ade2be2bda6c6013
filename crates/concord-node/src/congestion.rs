//! The congestion controller every connection uses: QUIC's CUBIC whose
//! window never falls below the window every connection starts with (ten
//! full packets, RFC 9002 §7.2), where plain CUBIC may fall to two.
//!
//! Why: in a bulk transfer the receiving side sends little but what it
//! sends matters: flow-control credit (`MAX_STREAM_DATA`) that lets the
//! sender go on. Measured on loopback (two nodes, F1's 2 GiB in 8 streams),
//! the receiver's own small packets were declared lost by the thousand
//! (~10,000 of ~12,400, with no datagram dropped by the kernel and none of
//! the losses found spurious later), because the busy sender acknowledges
//! them late. Each "loss" halved the receiver's window until it held two
//! packets, so the credit trickled out and both machines' CPUs sat idle
//! about a third of the transfer. With the floor the idle time fell from
//! ~3.5–4.5 to ~0.8–1.5 CPU-seconds and the transfer took ~15% less time
//! (ARCHITECTURE.md, "Congestion window floor").
//!
//! The cost: under real, severe congestion a connection keeps up to ten
//! packets in flight instead of two, the same burst any new connection
//! sends first, and still paced over the round trip.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use iroh::endpoint::{Controller, ControllerFactory, ControllerMetrics, RttEstimator};
use noq_proto::congestion::CubicConfig;

/// Builds [`FlooredCubic`] controllers (one per path).
#[derive(Debug, Default)]
pub struct FlooredCubicConfig {
    cubic: Arc<CubicConfig>,
}

impl ControllerFactory for FlooredCubicConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let inner = self.cubic.clone().build(now, current_mtu);
        Box::new(FlooredCubic { inner })
    }
}

/// CUBIC with its window floored at its initial window.
#[derive(Debug)]
pub struct FlooredCubic {
    inner: Box<dyn Controller>,
}

impl Controller for FlooredCubic {
    fn on_sent(&mut self, now: Instant, bytes: u64, largest_pn: u64) {
        self.inner.on_sent(now, bytes, largest_pn)
    }

    fn on_packet_sent(&mut self, now: Instant, bytes: u16, pn: u64) {
        self.inner.on_packet_sent(now, bytes, pn)
    }

    fn on_cwnd_limited(&mut self) {
        self.inner.on_cwnd_limited()
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        pn: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, pn, app_limited, rtt)
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked)
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        is_ecn: bool,
        lost_bytes: u64,
        largest_lost_pn: u64,
    ) {
        self.inner.on_congestion_event(
            now,
            sent,
            is_persistent_congestion,
            is_ecn,
            lost_bytes,
            largest_lost_pn,
        )
    }

    fn on_packet_lost(&mut self, lost_bytes: u16, pn: u64, now: Instant) {
        self.inner.on_packet_lost(lost_bytes, pn, now)
    }

    fn on_spurious_congestion_event(&mut self) {
        self.inner.on_spurious_congestion_event()
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu)
    }

    fn on_ack_frequency_update(
        &mut self,
        ack_eliciting_threshold: u64,
        requested_max_ack_delay: std::time::Duration,
    ) {
        self.inner
            .on_ack_frequency_update(ack_eliciting_threshold, requested_max_ack_delay)
    }

    fn window(&self) -> u64 {
        self.inner.window().max(self.inner.initial_window())
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = self.inner.metrics();
        metrics.congestion_window = self.window();
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(FlooredCubic {
            inner: self.inner.clone_box(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> Box<dyn Controller> {
        Arc::new(FlooredCubicConfig::default()).build(Instant::now(), 1200)
    }

    #[test]
    fn losses_never_take_the_window_below_the_initial_window() {
        let mut c = controller();
        let initial = c.initial_window();
        assert!(initial >= 10 * 1200, "initial window {initial}");
        let start = Instant::now();
        for pn in 0..50 {
            let now = start + std::time::Duration::from_millis(pn * 10);
            c.on_congestion_event(now, now, pn % 5 == 0, false, 1200, pn);
            assert!(c.window() >= initial, "window {} after {pn}", c.window());
            assert_eq!(c.metrics().congestion_window, c.window());
        }
    }

    #[test]
    fn where_plain_cubic_falls_to_two_packets_the_floor_holds() {
        let now = Instant::now();
        let mut floored = controller();
        let mut plain = Arc::new(CubicConfig::default()).build(now, 1200);
        assert_eq!(
            floored.window(),
            plain.window(),
            "no loss: CUBIC's own window"
        );
        floored.on_congestion_event(now, now, true, false, 1200, 1);
        plain.on_congestion_event(now, now, true, false, 1200, 1);
        assert!(
            plain.window() < plain.initial_window() / 2,
            "{}",
            plain.window()
        );
        assert_eq!(floored.window(), floored.initial_window());
    }
}
