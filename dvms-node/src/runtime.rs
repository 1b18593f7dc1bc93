//! The daemon's event loop: drives the pure [`overlay::Overlay`] with the wall clock and
//! the libp2p swarm, answers status requests, and keeps the metrics.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::StreamExt;
use libp2p::metrics::Recorder;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::{DialError, ListenError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm};
use overlay::{Event, Input, Output, Overlay};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::api::{self, Api};
use crate::config::{self, Config};
use crate::hypervisor::{Hypervisor, Libvirt};
use crate::isp::{self, HostState, Isp, VmId};
use crate::net::{self, Behaviour, BehaviourEvent, Frame, NetConfig};
use crate::protocol::{self, Ack};
use crate::NodeId;

/// What `GET /status` returns.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub id: NodeId,
    pub incarnation: u64,
    pub uptime_ms: u64,
    pub listen: Vec<String>,
    pub mode: overlay::Mode,
    pub coordinate: vivaldi::Coord,
    pub error: f64,
    /// Every other member, in ring order after this node.
    pub members: Vec<MemberStatus>,
    pub suspected: Vec<NodeId>,
    /// The node a partition started here would grow by first.
    pub best_outside_self: Option<NodeId>,
    pub connected_peers: usize,
    /// The scheduler's view, when the daemon schedules this host.
    pub scheduler: Option<SchedulerStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SchedulerStatus {
    pub libvirt_uri: String,
    pub dry_run: bool,
    /// The last sample of this host: capacities and VMs with their CPU use.
    pub host: Option<HostState>,
    /// Demand over capacity.
    pub load: f64,
    pub threshold: f64,
    pub overloaded: bool,
    /// This node's part in a partition.
    pub role: isp::RoleView<NodeId>,
    /// The last plans this node computed as a leader.
    pub last_plans: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemberStatus {
    #[serde(flatten)]
    pub view: overlay::MemberView<NodeId>,
    pub connected: bool,
}

type Labels = Vec<(&'static str, &'static str)>;

/// This daemon's own metrics (libp2p's are registered beside them).
struct Metrics {
    members: Gauge,
    suspected: Gauge,
    sent: Counter,
    received: Counter,
    dropped: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    membership_events: Family<Labels, Counter>,
    vivaldi_error: Gauge<f64, std::sync::atomic::AtomicU64>,
    isp_events: Family<Labels, Counter>,
    migrations: Family<Labels, Counter>,
    migration_seconds: Histogram,
    partition_size: Histogram,
    plan_compute_seconds: Histogram,
    host_load: Gauge<f64, std::sync::atomic::AtomicU64>,
    monitor_errors: Counter,
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
            received: Counter::default(),
            dropped: Family::default(),
            refused: Family::default(),
            membership_events: Family::default(),
            vivaldi_error: Gauge::default(),
            isp_events: Family::default(),
            migrations: Family::default(),
            migration_seconds: exp(0.25, 12),
            partition_size: exp(1.0, 12),
            plan_compute_seconds: exp(0.0005, 14),
            host_load: Gauge::default(),
            monitor_errors: Counter::default(),
        }
    }
}

impl Metrics {
    fn register(r: &mut Registry) -> Metrics {
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
        r.register("messages_sent", "Overlay messages sent", m.sent.clone());
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
            "plan_compute_seconds",
            "Time to compute a plan (placement solve and migration ordering)",
            m.plan_compute_seconds.clone(),
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

pub struct Daemon {
    swarm: Swarm<Behaviour>,
    overlay: Overlay<NodeId>,
    rng: StdRng,
    started: Instant,
    me: PeerId,
    bootstrap: Vec<Multiaddr>,
    /// Which peer answered at each bootstrap address.
    bootstrap_peers: HashMap<Multiaddr, PeerId>,
    listen_addrs: Vec<Multiaddr>,
    pending: HashSet<OutboundRequestId>,
    metrics: Metrics,
    p2p_metrics: libp2p::metrics::Metrics,
    status_rx: mpsc::Receiver<oneshot::Sender<Status>>,
    sched: Option<Sched>,
    hv_tx: mpsc::UnboundedSender<HvDone>,
    hv_rx: mpsc::UnboundedReceiver<HvDone>,
}

/// The scheduling side of the daemon.
struct Sched {
    cfg: config::Scheduler,
    isp: Isp<NodeId>,
    hv: Arc<dyn Hypervisor>,
    /// A sample is being taken (samples never overlap).
    sampling: bool,
    host: Option<HostState>,
    events: Option<std::io::LineWriter<std::fs::File>>,
    last_plans: std::collections::VecDeque<serde_json::Value>,
    /// When each running migration started, and where to.
    migrating: HashMap<VmId, (Instant, NodeId)>,
}

/// Results of blocking hypervisor calls, back on the event loop.
enum HvDone {
    Sample(Result<HostState, crate::hypervisor::HvError>),
    Migrated {
        vm: VmId,
        result: Result<(), String>,
        /// Dry run: reported done, nothing moved.
        dry_run: bool,
    },
}

const TICK: Duration = Duration::from_millis(100);
const REDIAL: Duration = Duration::from_secs(2);
const LEAVE_GRACE: Duration = Duration::from_secs(1);

/// Runs the daemon until `shutdown` completes, then leaves the overlay gracefully.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let psk = config::read_psk(&cfg.psk_file)?;
    let (key, created) = config::load_or_create_identity(&cfg.identity_file)?;
    let me = key.public().to_peer_id();
    if created {
        info!(identity_file = %cfg.identity_file.display(), "generated a new identity");
    }
    info!(peer_id = %me, psk_fingerprint = %psk.fingerprint(), mode = ?cfg.overlay.mode, "starting");

    let mut registry = Registry::default();
    let mut swarm = net::build_swarm(
        key,
        &NetConfig {
            psk,
            allow: cfg.allow.clone(),
            ping_interval: cfg.ping_interval,
            idle_timeout: cfg.idle_timeout,
        },
        &mut registry,
    )?;
    let p2p_metrics = libp2p::metrics::Metrics::new(&mut registry);
    let metrics = Metrics::register(registry.sub_registry_with_prefix("dvms"));
    swarm
        .listen_on(cfg.listen.clone())
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;

    let http = tokio::net::TcpListener::bind(cfg.http)
        .await
        .with_context(|| format!("cannot serve HTTP on {}", cfg.http))?;
    info!(http = %http.local_addr()?, "serving /status and /metrics");
    let (status_tx, status_rx) = mpsc::channel(16);
    let api = Api {
        status: status_tx,
        registry: Arc::new(registry),
    };
    tokio::spawn(async move {
        if let Err(e) = axum::serve(http, api::router(api)).await {
            warn!("HTTP server stopped: {e}");
        }
    });

    let incarnation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1);
    let sched = match cfg.scheduler.clone() {
        None => None,
        Some(sc) => {
            let events = match &sc.event_log {
                None => None,
                Some(p) => Some(std::io::LineWriter::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .with_context(|| format!("cannot open event log {}", p.display()))?,
                )),
            };
            info!(libvirt = %sc.libvirt_uri, dry_run = sc.dry_run, "scheduling this host's VMs");
            Some(Sched {
                isp: Isp::new(NodeId(me), incarnation, sc.isp.clone()),
                hv: Arc::new(Libvirt::new(
                    &sc.libvirt_uri,
                    sc.capacity.clone(),
                    sc.cpu_window,
                )),
                sampling: false,
                host: None,
                events,
                last_plans: std::collections::VecDeque::new(),
                migrating: HashMap::new(),
                cfg: sc,
            })
        }
    };
    let (hv_tx, hv_rx) = mpsc::unbounded_channel();
    let mut daemon = Daemon {
        swarm,
        overlay: Overlay::new(NodeId(me), incarnation, cfg.overlay.clone()),
        rng: StdRng::from_os_rng(),
        started: Instant::now(),
        me,
        bootstrap: cfg.bootstrap.clone(),
        bootstrap_peers: HashMap::new(),
        listen_addrs: Vec::new(),
        pending: HashSet::new(),
        metrics,
        p2p_metrics,
        status_rx,
        sched,
        hv_tx,
        hv_rx,
    };
    daemon.event_loop(shutdown).await
}

impl Daemon {
    fn now(&self) -> overlay::Millis {
        self.started.elapsed().as_millis() as u64
    }

    async fn event_loop(&mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(TICK);
        let mut redial = tokio::time::interval(REDIAL);
        let monitor_every = self
            .sched
            .as_ref()
            .map_or(Duration::from_secs(3600), |s| s.cfg.monitor_interval);
        let mut monitor = tokio::time::interval(monitor_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        monitor.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                _ = tick.tick() => {
                    self.input(Input::Tick);
                    self.isp_input(isp::Input::Tick);
                }
                _ = monitor.tick() => self.start_sample(),
                Some(done) = self.hv_rx.recv() => self.on_hypervisor(done),
                _ = redial.tick() => self.dial_bootstrap(),
                Some(reply) = self.status_rx.recv() => { let _ = reply.send(self.status()); }
                _ = &mut shutdown => break,
            }
        }
        info!("leaving the overlay");
        self.pending.clear();
        // Leave any partition first (a leader frees its members), then the overlay.
        self.isp_input(isp::Input::Shutdown);
        self.input(Input::Leave);
        let deadline = tokio::time::sleep(LEAVE_GRACE);
        tokio::pin!(deadline);
        while !self.pending.is_empty() {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                _ = &mut deadline => break,
            }
        }
        Ok(())
    }

    fn input(&mut self, input: Input<NodeId>) {
        let now = self.now();
        let outputs = self.overlay.handle(now, input, &mut self.rng);
        for o in outputs {
            match o {
                Output::Send { to, msg } => self.send(to.0, &msg),
                Output::Event(e) => self.on_overlay_event(e),
            }
        }
    }

    fn send(&mut self, to: PeerId, msg: &overlay::Message<NodeId>) {
        match protocol::encode_envelope(msg) {
            Ok(bytes) => self.send_bytes(to, bytes),
            Err(e) => warn!(%to, "message not sent: {e}"),
        }
    }

    fn send_bytes(&mut self, to: PeerId, bytes: Vec<u8>) {
        // Connected: the connection is used. Otherwise dial the addresses it gossiped.
        let addrs = if self.swarm.is_connected(&to) {
            Vec::new()
        } else {
            self.overlay
                .member(&NodeId(to), 0)
                .map(|m| m.addrs.iter().filter_map(|a| a.parse().ok()).collect())
                .unwrap_or_default()
        };
        let id = self
            .swarm
            .behaviour_mut()
            .messages
            .send_request_with_addresses(&to, Frame::Bytes(bytes), addrs);
        self.pending.insert(id);
        self.metrics.sent.inc();
    }

    fn on_overlay_event(&mut self, e: Event<NodeId>) {
        let kind = match &e {
            Event::Joined(id) => {
                info!(peer = %id, "member joined");
                "joined"
            }
            Event::Suspected(id) => {
                info!(peer = %id, "member suspected (no heartbeat)");
                "suspected"
            }
            Event::Recovered(id) => {
                info!(peer = %id, "member recovered");
                "recovered"
            }
            Event::Failed(id) => {
                info!(peer = %id, "member failed and was dropped");
                self.isp_input(isp::Input::PeerFailed(*id));
                "failed"
            }
            Event::Left(id) => {
                info!(peer = %id, "member left");
                self.isp_input(isp::Input::PeerFailed(*id));
                "left"
            }
            Event::Rejected { from, reason } => {
                warn!(peer = %from, "dropped a gossiped record: {reason}");
                count(&self.metrics.dropped, "reason", "invalid_record");
                "rejected"
            }
        };
        count(&self.metrics.membership_events, "kind", kind);
        self.metrics.members.set(self.overlay.len() as i64);
        let suspected = self.overlay.suspected_count();
        self.metrics.suspected.set(suspected as i64);
    }

    /// Dials every bootstrap address whose peer is not a live, connected member, so that
    /// a node that started first, or restarted, finds the others again.
    fn dial_bootstrap(&mut self) {
        for addr in self.bootstrap.clone() {
            if self.listen_addrs.contains(&addr) {
                continue;
            }
            if let Some(peer) = self.bootstrap_peers.get(&addr) {
                if *peer == self.me
                    || (self.overlay.is_alive(&NodeId(*peer)) && self.swarm.is_connected(peer))
                {
                    continue;
                }
            }
            debug!(%addr, "dialing bootstrap peer");
            if let Err(e) = self.swarm.dial(addr.clone()) {
                debug!(%addr, "cannot dial bootstrap peer: {e}");
            }
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        self.p2p_metrics.record(&ev);
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!("listening on {address}/p2p/{}", self.me);
                self.listen_addrs.push(address);
                self.advertise();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| *a != address);
                self.advertise();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                if endpoint.is_dialer() {
                    let addr = without_p2p(endpoint.get_remote_address());
                    if self.bootstrap.contains(&addr) {
                        self.bootstrap_peers.insert(addr, peer_id);
                    }
                }
                self.input(Input::Seed(NodeId(peer_id)));
            }
            SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                debug!(peer = %peer_id, ?cause, "connection closed");
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                peer_id,
                ..
            } => match error {
                ListenError::Denied { cause } => {
                    warn!(peer = %peer_id.map(|p| p.to_string()).unwrap_or_default(), from = %send_back_addr, "refused connection: {cause} (peer not on the allow-list)");
                    self.refused("not_allowed");
                }
                ListenError::Transport(e) => {
                    warn!(from = %send_back_addr, "incoming connection failed: {}", net::explain_connection_error(&e));
                    self.refused("handshake");
                }
                other => debug!(from = %send_back_addr, "incoming connection failed: {other}"),
            },
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => match error {
                DialError::Denied { cause } => {
                    warn!(peer = %peer_id.map(|p| p.to_string()).unwrap_or_default(), "connection refused: {cause} (peer not on the allow-list)");
                    self.refused("not_allowed");
                }
                DialError::Transport(errors) => {
                    for (addr, e) in errors {
                        warn!(%addr, "cannot connect: {}", net::explain_connection_error(&e));
                    }
                    self.refused("handshake");
                }
                other => debug!(peer = ?peer_id, "dial failed: {other}"),
            },
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ev)) => {
                self.p2p_metrics.record(&ev);
                if let Ok(rtt) = ev.result {
                    let rtt_ms = rtt.as_secs_f64() * 1e3;
                    self.input(Input::Rtt {
                        peer: NodeId(ev.peer),
                        rtt_ms,
                    });
                    self.metrics.vivaldi_error.set(self.overlay.error());
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(ev)) => {
                self.p2p_metrics.record(&ev);
                if let libp2p::identify::Event::Received { peer_id, info, .. } = ev {
                    for addr in info.listen_addrs.into_iter().take(protocol::MAX_ADDRS) {
                        self.swarm.add_peer_address(peer_id, addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Messages(ev)) => self.on_message(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Allow(never)) => match never {},
            _ => {}
        }
    }

    fn refused(&mut self, reason: &'static str) {
        count(&self.metrics.refused, "reason", reason);
    }

    fn dropped(&mut self, reason: &'static str) {
        count(&self.metrics.dropped, "reason", reason);
    }

    fn on_message(&mut self, ev: request_response::Event<Frame, Frame>) {
        use request_response::{Event as E, Message as M};
        match ev {
            E::Message {
                peer,
                message: M::Request {
                    request, channel, ..
                },
                ..
            } => {
                let ack = match request {
                    Frame::Invalid(reason) => {
                        warn!(%peer, "dropped an incoming message: {reason}");
                        self.dropped("unreadable");
                        Ack::Rejected(reason)
                    }
                    Frame::Bytes(request) => match protocol::decode_envelope(&request) {
                        Ok(protocol::Incoming::Overlay(msg)) => {
                            self.metrics.received.inc();
                            self.input(Input::Message {
                                from: NodeId(peer),
                                msg,
                            });
                            Ack::Ok
                        }
                        Ok(protocol::Incoming::Isp(msg)) => {
                            self.metrics.received.inc();
                            self.isp_message(NodeId(peer), *msg);
                            Ack::Ok
                        }
                        Err(e) => {
                            warn!(%peer, bytes = request.len(), "dropped a malformed message: {e}");
                            self.dropped("malformed");
                            Ack::Rejected(e.to_string())
                        }
                    },
                };
                if let Ok(bytes) = protocol::encode(&ack) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .messages
                        .send_response(channel, Frame::Bytes(bytes));
                }
            }
            E::Message {
                peer,
                message:
                    M::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.pending.remove(&request_id);
                let ack = match response {
                    Frame::Bytes(b) => protocol::decode::<Ack>(&b).map_err(|e| e.to_string()),
                    Frame::Invalid(reason) => Err(reason),
                };
                match ack {
                    Ok(Ack::Ok) => {}
                    Ok(Ack::Rejected(reason)) => {
                        warn!(%peer, "peer rejected our message: {reason:.200}")
                    }
                    Err(e) => warn!(%peer, "malformed acknowledgement: {e}"),
                }
            }
            E::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.pending.remove(&request_id);
                debug!(%peer, "message not delivered: {error}");
            }
            E::InboundFailure { peer, error, .. } => {
                debug!(%peer, "incoming message failed: {error}");
            }
            E::ResponseSent { .. } => {}
        }
    }

    /// The addresses gossiped for this node: the non-loopback listen addresses if there
    /// are any (a loopback address points every peer at itself), else the loopback ones.
    fn advertise(&mut self) {
        let routable: Vec<&Multiaddr> = self
            .listen_addrs
            .iter()
            .filter(|a| !is_loopback(a))
            .collect();
        let chosen: Vec<&Multiaddr> = if routable.is_empty() {
            self.listen_addrs.iter().collect()
        } else {
            routable
        };
        let addrs = chosen
            .into_iter()
            .take(protocol::MAX_ADDRS)
            .map(|a| a.to_string())
            .collect();
        self.overlay.set_addrs(addrs);
    }

    fn status(&self) -> Status {
        let now = self.now();
        let members: Vec<MemberStatus> = self
            .overlay
            .members(now)
            .into_iter()
            .map(|view| MemberStatus {
                connected: self.swarm.is_connected(&view.id.0),
                view,
            })
            .collect();
        let suspected = members
            .iter()
            .filter(|m| m.view.health == overlay::Health::Suspected)
            .map(|m| m.view.id)
            .collect();
        let me = NodeId(self.me);
        Status {
            id: me,
            incarnation: self.overlay.me().incarnation,
            uptime_ms: now,
            listen: self.listen_addrs.iter().map(|a| a.to_string()).collect(),
            mode: self.overlay.config().mode,
            coordinate: self.overlay.coordinate(),
            error: self.overlay.error(),
            members,
            suspected,
            best_outside_self: self.overlay.best_outside(&me, |id| *id == me),
            connected_peers: self.swarm.connected_peers().count(),
            scheduler: self.sched.as_ref().map(|s| SchedulerStatus {
                libvirt_uri: s.cfg.libvirt_uri.clone(),
                dry_run: s.cfg.dry_run,
                load: s.host.as_ref().map_or(0.0, HostState::load),
                host: s.host.clone(),
                threshold: s.cfg.isp.thresholds.high,
                overloaded: s.isp.is_overloaded(),
                role: s.isp.role(),
                last_plans: s.last_plans.iter().cloned().collect(),
            }),
        }
    }

    /// Samples the hypervisor off the event loop (libvirt calls block).
    fn start_sample(&mut self) {
        let Some(s) = &mut self.sched else { return };
        if s.sampling {
            return;
        }
        s.sampling = true;
        let hv = s.hv.clone();
        let tx = self.hv_tx.clone();
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(HvDone::Sample(hv.sample()));
        });
    }

    fn on_hypervisor(&mut self, done: HvDone) {
        match done {
            HvDone::Sample(result) => {
                let Some(s) = &mut self.sched else { return };
                s.sampling = false;
                match result {
                    Ok(h) => {
                        self.metrics.host_load.set(h.load());
                        s.host = Some(h.clone());
                        self.isp_input(isp::Input::Monitor(h));
                    }
                    Err(e) => {
                        warn!("cannot sample the hypervisor: {e}");
                        self.metrics.monitor_errors.inc();
                        self.isp_input(isp::Input::HypervisorDown);
                    }
                }
            }
            HvDone::Migrated {
                vm,
                result,
                dry_run,
            } => {
                let Some(s) = &mut self.sched else { return };
                let name = s.hv.name_of(vm);
                let (secs, to) = s
                    .migrating
                    .remove(&vm)
                    .map(|(t, to)| (t.elapsed().as_secs_f64(), Some(to)))
                    .unwrap_or((0.0, None));
                let ok = result.is_ok();
                match &result {
                    Ok(()) => info!(vm = %name, to = ?to, secs, "live migration done"),
                    Err(e) => warn!(vm = %name, to = ?to, secs, "live migration failed: {e}"),
                }
                count(
                    &self.metrics.migrations,
                    "result",
                    if ok { "ok" } else { "failed" },
                );
                if ok {
                    self.metrics.migration_seconds.observe(secs);
                }
                let line = serde_json::json!({
                    "event": "migration_result", "vm": vm.0.to_string(), "vm_name": name,
                    "to": to, "ok": ok, "secs": secs, "error": result.err(), "dry_run": dry_run,
                });
                self.log_event(line);
                self.isp_input(isp::Input::MigrationDone { vm, ok });
            }
        }
    }

    fn isp_message(&mut self, from: NodeId, msg: isp::Message<NodeId>) {
        if self.sched.is_none() {
            self.dropped("not_scheduling");
            return;
        }
        self.isp_input(isp::Input::Message { from, msg });
    }

    fn isp_input(&mut self, input: isp::Input<NodeId>) {
        let now = self.now();
        let Some(s) = &mut self.sched else { return };
        let started = Instant::now();
        let outputs = s.isp.handle(now, input, &self.overlay);
        let compute = started.elapsed().as_secs_f64();
        for o in outputs {
            match o {
                isp::Output::Send { to, msg } => match protocol::encode_isp(&msg) {
                    Ok(bytes) => self.send_bytes(to.0, bytes),
                    Err(e) => warn!(%to, "scheduling message not sent: {e}"),
                },
                isp::Output::Migrate { vm, to } => self.start_migration(vm, to),
                isp::Output::Event(e) => {
                    if matches!(e, isp::Event::Planned { .. }) {
                        self.metrics.plan_compute_seconds.observe(compute);
                    }
                    self.on_isp_event(e);
                }
            }
        }
    }

    fn on_isp_event(&mut self, e: isp::Event<NodeId>) {
        let mut line = match serde_json::to_value(&e) {
            Ok(v) => v,
            Err(err) => serde_json::json!({ "event": "unserializable", "error": err.to_string() }),
        };
        if let (
            isp::Event::MigrationStarted { vm, .. } | isp::Event::MigrationEnded { vm, .. },
            Some(s),
            Some(o),
        ) = (&e, &self.sched, line.as_object_mut())
        {
            o.insert("vm_name".into(), s.hv.name_of(*vm).into());
        }
        match &e {
            isp::Event::Overloaded { load } => info!(load, "host overloaded"),
            isp::Event::Cleared { load } => info!(load, "host back under its threshold"),
            isp::Event::Started { id, .. } => info!(partition = ?id, "started a partition"),
            isp::Event::Planned {
                id,
                migrations,
                size,
                ..
            } => {
                info!(partition = ?id, migrations, size, "computed a plan");
                if let Some(s) = &mut self.sched {
                    s.last_plans.push_back(line.clone());
                    if s.last_plans.len() > 10 {
                        s.last_plans.pop_front();
                    }
                }
            }
            isp::Event::Dissolved {
                id,
                reason,
                members,
                ..
            } => {
                info!(partition = ?id, ?reason, size = members.len(), "dissolved the partition");
                self.metrics.partition_size.observe(members.len() as f64);
            }
            other => debug!(event = ?other, "scheduling event"),
        }
        count(&self.metrics.isp_events, "kind", e.kind());
        self.log_event(line);
    }

    /// Appends one line to the event log: the event with a timestamp and this node.
    fn log_event(&mut self, mut line: serde_json::Value) {
        let Some(Sched {
            events: Some(w), ..
        }) = &mut self.sched
        else {
            return;
        };
        if let Some(o) = line.as_object_mut() {
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            o.insert("ts_ms".into(), ts.into());
            o.insert("node".into(), self.me.to_string().into());
        }
        use std::io::Write as _;
        if let Err(e) = writeln!(w, "{line}") {
            warn!("cannot write the event log: {e}");
        }
    }

    /// Starts a live migration ordered by this node's partition leader.
    fn start_migration(&mut self, vm: VmId, to: NodeId) {
        let Some(s) = &mut self.sched else { return };
        let ip = self.overlay.member(&to, 0).and_then(|m| {
            m.addrs
                .iter()
                .filter_map(|a| a.parse::<Multiaddr>().ok())
                .find_map(|a| {
                    a.iter().find_map(|p| match p {
                        Protocol::Ip4(ip) => Some(ip.to_string()),
                        Protocol::Ip6(ip) => Some(format!("[{ip}]")),
                        _ => None,
                    })
                })
        });
        s.migrating.insert(vm, (Instant::now(), to));
        let tx = self.hv_tx.clone();
        let Some(ip) = ip else {
            let _ = tx.send(HvDone::Migrated {
                vm,
                result: Err(format!("no known address for {to}")),
                dry_run: false,
            });
            return;
        };
        let dest = s.cfg.migration_uri.replace("{host}", &ip);
        info!(vm = %s.hv.name_of(vm), %dest, dry_run = s.cfg.dry_run, "live-migrating");
        if s.cfg.dry_run {
            // Reported as done so that the plan goes on; nothing moved.
            let _ = tx.send(HvDone::Migrated {
                vm,
                result: Ok(()),
                dry_run: true,
            });
            return;
        }
        let hv = s.hv.clone();
        let timeout = s.cfg.migration_timeout;
        tokio::task::spawn_blocking(move || {
            let result = hv.migrate(vm, &dest, timeout).map_err(|e| e.to_string());
            let _ = tx.send(HvDone::Migrated {
                vm,
                result,
                dry_run: false,
            });
        });
    }
}

/// Adds one to the counter of `family` labelled `key = value`.
fn count(family: &Family<Labels, Counter>, key: &'static str, value: &'static str) {
    family.get_or_create(&vec![(key, value)]).inc();
}

fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}
