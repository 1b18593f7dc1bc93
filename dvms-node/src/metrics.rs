//! The daemon's own Prometheus metrics (libp2p's are registered beside them).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    pub members: Gauge,
    pub suspected: Gauge,
    pub sent: Counter,
    pub overlay_bytes_sent: Family<Labels, Counter>,
    pub overlay_messages_sent: Family<Labels, Counter>,
    pub overlay_messages_dialed: Family<Labels, Counter>,
    pub received: Counter,
    pub dropped: Family<Labels, Counter>,
    pub refused: Family<Labels, Counter>,
    pub membership_events: Family<Labels, Counter>,
    pub vivaldi_error: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub isp_events: Family<Labels, Counter>,
    pub ha_events: Family<Labels, Counter>,
    pub migrations: Family<Labels, Counter>,
    pub migration_seconds: Histogram,
    pub partition_size: Histogram,
    pub solve_seconds: Histogram,
    pub host_load: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub monitor_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let exp = |start: f64, n: u16| {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                start, 2.0, n,
            ))
        };
        Metrics {
            members: Gauge::default(),
            suspected: Gauge::default(),
            sent: Counter::default(),
            overlay_bytes_sent: Family::default(),
            overlay_messages_sent: Family::default(),
            overlay_messages_dialed: Family::default(),
            received: Counter::default(),
            dropped: Family::default(),
            refused: Family::default(),
            membership_events: Family::default(),
            vivaldi_error: Gauge::default(),
            isp_events: Family::default(),
            ha_events: Family::default(),
            migrations: Family::default(),
            migration_seconds: exp(0.25, 12),
            partition_size: exp(1.0, 12),
            solve_seconds: exp(0.0005, 14),
            host_load: Gauge::default(),
            monitor_errors: Counter::default(),
        }
    }
}

impl Metrics {
    pub fn register(r: &mut Registry) -> Metrics {
        let m = Metrics::default();
        r.register(
            "overlay_members",
            "Other members known (alive or suspected)",
            m.members.clone(),
        );
        r.register(
            "overlay_suspected",
            "Members currently suspected",
            m.suspected.clone(),
        );
        r.register("messages_sent", "Messages sent", m.sent.clone());
        r.register(
            "overlay_bytes_sent",
            "Bytes of overlay messages sent, by kind (encoded, before libp2p framing and encryption)",
            m.overlay_bytes_sent.clone(),
        );
        r.register(
            "overlay_messages_sent",
            "Overlay messages sent, by kind",
            m.overlay_messages_sent.clone(),
        );
        r.register(
            "overlay_messages_dialed",
            "Overlay messages sent to a peer with no open connection (each opens one), by kind",
            m.overlay_messages_dialed.clone(),
        );
        r.register(
            "messages_received",
            "Valid overlay messages received",
            m.received.clone(),
        );
        r.register(
            "messages_dropped",
            "Messages dropped, by reason",
            m.dropped.clone(),
        );
        r.register(
            "connections_refused",
            "Connections refused or failed, by reason",
            m.refused.clone(),
        );
        r.register(
            "membership_events",
            "Membership changes, by kind",
            m.membership_events.clone(),
        );
        r.register(
            "vivaldi_error",
            "This node's Vivaldi error estimate",
            m.vivaldi_error.clone(),
        );
        r.register(
            "isp_events",
            "Scheduling events (overloaded, started, planned, dissolved, ...), by kind",
            m.isp_events.clone(),
        );
        r.register(
            "ha_events",
            "HA events (lease_held, fencing, suspected, confirmed, recovering, restarted, vm_lost, ...), by kind",
            m.ha_events.clone(),
        );
        r.register(
            "migrations",
            "Live migrations started here, by result",
            m.migrations.clone(),
        );
        r.register(
            "migration_seconds",
            "Duration of live migrations started here",
            m.migration_seconds.clone(),
        );
        r.register(
            "partition_size",
            "Hosts in the partitions this node dissolved as leader",
            m.partition_size.clone(),
        );
        r.register(
            "solve_seconds",
            "Time of each partition solve (placement and migration ordering), run off the event loop",
            m.solve_seconds.clone(),
        );
        r.register(
            "host_load",
            "This host's CPU demand over its capacity",
            m.host_load.clone(),
        );
        r.register(
            "monitor_errors",
            "Failed samples of the hypervisor",
            m.monitor_errors.clone(),
        );
        m
    }
}

/// Adds one to the counter of `family` labelled `key = value`.
pub fn count(family: &Family<Labels, Counter>, key: &'static str, value: &'static str) {
    family.get_or_create(&vec![(key, value)]).inc();
}
