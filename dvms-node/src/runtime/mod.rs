//! The daemon's event loop: drives the pure [`Node`] (overlay + ISP, from `dvms-core`)
//! with the wall clock, the libp2p swarm and the hypervisor. It sleeps until the node's
//! next timeout or the next input, carries out what the node asks (send a message,
//! live-migrate a VM), and keeps the metrics, the event log and the status.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use dvms_core::host::{HostState, Millis, VmId};
use dvms_core::isp;
use dvms_core::node::{Input, Message, Node, NodeConfig, Output};
use futures::StreamExt;
use libp2p::metrics::Recorder;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::{DialError, ListenError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm};
use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::addrbook::AddressBook;
use crate::api::{self, Api};
use crate::config::{self, Config};
use crate::events::EventLog;
use crate::hypervisor::{Hypervisor, Libvirt};
use crate::metrics::{count, Metrics};
use crate::net::{self, Behaviour, BehaviourEvent, Frame, NetConfig};
use crate::peer_cache;
use crate::protocol::{self, Ack};
use crate::status::Status;
use crate::NodeId;
use migration::ADDRESS_WAIT;

mod ha;
mod migration;
mod report;

/// Log target of peers entering and leaving the overlay views (debug level: they churn
/// with every shuffle); `RUST_LOG=info,dvms_node::views=debug` shows when each peer was
/// forgotten, by the daemon's own clock.
pub const VIEWS_LOG: &str = "dvms_node::views";

pub struct Daemon {
    swarm: Swarm<Behaviour>,
    node: Node<NodeId>,
    started: Instant,
    me: PeerId,
    bootstrap: Vec<Multiaddr>,
    /// Which peer answered at each bootstrap address.
    bootstrap_peers: HashMap<Multiaddr, PeerId>,
    /// Where the peers last known are kept ([`peer_cache`]), and what it held at start.
    peer_cache: PathBuf,
    remembered: Vec<Multiaddr>,
    peers_saved_at: Instant,
    /// Addresses of peers outside the overlay's views (see [`AddressBook`]).
    addresses: AddressBook,
    /// What each peer said of its own addresses (identify): the only ones VMs go to.
    own_addresses: AddressBook,
    /// Migrations waiting for their destination to identify itself.
    awaiting_address: HashMap<VmId, NodeId>,
    listen_addrs: Vec<Multiaddr>,
    /// Requests awaiting their acknowledgement.
    pending: HashSet<OutboundRequestId>,
    /// The last ping RTT of each connected peer, so that a peer whose first ping lands
    /// before it enters the views (libp2p pings a new connection at once, the next ping
    /// comes 10 s later) still gets its sample when it joins. At most one per connection.
    last_rtt: HashMap<PeerId, f64>,
    metrics: Metrics,
    p2p_metrics: libp2p::metrics::Metrics,
    status_rx: mpsc::Receiver<oneshot::Sender<Status>>,
    sched: Option<Sched>,
    /// Names of other hosts' VMs that HA restarts, from their definitions.
    ha_names: HashMap<VmId, String>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
}

/// The scheduling side of the daemon.
struct Sched {
    cfg: config::Scheduler,
    hv: Arc<dyn Hypervisor>,
    /// A sample is being taken (samples never overlap).
    sampling: bool,
    host: Option<HostState>,
    events: Option<EventLog>,
    last_plans: VecDeque<serde_json::Value>,
    /// The last events (scheduling, migrations, HA), newest last, for the live view.
    recent: VecDeque<serde_json::Value>,
    /// (wall-clock ms, load) of the last samples, for the live view's chart.
    load_history: VecDeque<(u64, f64)>,
    last_no_plan: Option<serde_json::Value>,
    /// When each running migration started, and where to.
    migrating: HashMap<VmId, (Instant, NodeId)>,
}

/// Events the live view shows, and samples its load chart draws.
const RECENT_EVENTS: usize = 30;
const LOAD_HISTORY: usize = 300;

/// Wall-clock time, ms since the Unix epoch.
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Sched {
    /// Records an event: in the event log, and among the recent ones the live view shows.
    fn record(&mut self, mut line: serde_json::Value) {
        if let Some(o) = line.as_object_mut() {
            o.insert("ts_ms".into(), wall_ms().into());
        }
        self.recent.push_back(line.clone());
        if self.recent.len() > RECENT_EVENTS {
            self.recent.pop_front();
        }
        if let Some(log) = &mut self.events {
            log.write(line);
        }
    }
}

/// Results of blocking work (hypervisor calls, solves), back on the event loop.
enum Done {
    /// A solve ran for `secs` of wall-clock time.
    Solved {
        answer: Box<isp::SolveAnswer<NodeId>>,
        secs: f64,
    },
    /// A sample of the hypervisor, and with HA its VMs' definitions.
    Sample(
        Result<HostState, crate::hypervisor::HvError>,
        Option<Vec<(VmId, String)>>,
    ),
    /// An HA order carried out.
    Ha(Box<dvms_core::ha::Input<NodeId>>),
    Migrated {
        vm: VmId,
        result: Result<(), String>,
        /// Dry run: reported done, nothing moved.
        dry_run: bool,
    },
    /// The wait for a destination's own address is over.
    AddressWaitOver { vm: VmId },
}

const REDIAL: Duration = Duration::from_secs(2);
/// How often a node that knows peers saves them ([`peer_cache`]).
const PEER_CACHE_EVERY: Duration = Duration::from_secs(60);
const LEAVE_GRACE: Duration = Duration::from_secs(1);
/// With nothing due, the loop still wakes this often (and does nothing).
const IDLE_WAKE: Duration = Duration::from_secs(3600);

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
    info!(
        http = %http.local_addr()?,
        token_required = cfg.http_token.is_some(),
        "serving /status and /metrics"
    );
    let (status_tx, status_rx) = mpsc::channel(16);
    let api = Api {
        status: status_tx,
        registry: Arc::new(registry),
        token: cfg.http_token.as_deref().map(Arc::from),
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
                Some(p) => Some(EventLog::open(p, &me.to_string())?),
            };
            info!(libvirt = %sc.libvirt_uri, dry_run = sc.dry_run, "scheduling this host's VMs");
            Some(Sched {
                hv: Arc::new(
                    Libvirt::new(
                        &sc.libvirt_uri,
                        sc.capacity.clone(),
                        sc.cpu_window,
                        sc.migration_tls,
                    )
                    .with_host(sc.host_name.clone(), sc.max_vms),
                ),
                sampling: false,
                host: None,
                events,
                last_plans: VecDeque::new(),
                recent: VecDeque::new(),
                load_history: VecDeque::new(),
                last_no_plan: None,
                migrating: HashMap::new(),
                cfg: sc,
            })
        }
    };
    if cfg.ha.enabled {
        info!(
            guardians = cfg.ha.guardians,
            lease_ms = cfg.ha.lease_ms,
            "HA on: this host leases from its ring successors and fences itself without them"
        );
    }
    let node_cfg = NodeConfig {
        overlay: cfg.overlay.clone(),
        isp: cfg
            .scheduler
            .as_ref()
            .map(|s| s.isp.clone())
            .unwrap_or_default(),
        ha: cfg.ha.clone(),
    };
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let peer_cache_file = peer_cache::path(&cfg.identity_file);
    let mut daemon = Daemon {
        swarm,
        node: Node::new(NodeId(me), incarnation, &node_cfg, StdRng::from_os_rng()),
        started: Instant::now(),
        me,
        bootstrap: cfg.bootstrap.clone(),
        bootstrap_peers: HashMap::new(),
        remembered: peer_cache::load(&peer_cache_file),
        peer_cache: peer_cache_file,
        peers_saved_at: Instant::now(),
        addresses: AddressBook::default(),
        own_addresses: AddressBook::default(),
        awaiting_address: HashMap::new(),
        listen_addrs: Vec::new(),
        pending: HashSet::new(),
        last_rtt: HashMap::new(),
        metrics,
        p2p_metrics,
        status_rx,
        sched,
        ha_names: HashMap::new(),
        done_tx,
        done_rx,
    };
    daemon.event_loop(shutdown).await
}

impl Daemon {
    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as u64
    }

    /// The instant of the node's next timeout (or a long idle wait).
    fn next_wake(&self) -> tokio::time::Instant {
        let at = match self.node.poll_timeout() {
            Some(ms) => self.started + Duration::from_millis(ms),
            None => Instant::now() + IDLE_WAKE,
        };
        tokio::time::Instant::from_std(at)
    }

    async fn event_loop(&mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let mut redial = tokio::time::interval(REDIAL);
        let monitor_every = self
            .sched
            .as_ref()
            .map_or(Duration::from_secs(3600), |s| s.cfg.monitor_interval);
        let mut monitor = tokio::time::interval(monitor_every);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        monitor.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tokio::pin!(shutdown);
        loop {
            let wake = tokio::time::sleep_until(self.next_wake());
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                _ = wake => self.feed(|node, now| node.handle_timeout(now)),
                _ = monitor.tick() => self.start_sample(),
                Some(done) = self.done_rx.recv() => self.on_done(done),
                _ = redial.tick() => self.dial_bootstrap(),
                Some(reply) = self.status_rx.recv() => { let _ = reply.send(self.status()); }
                _ = &mut shutdown => break,
            }
        }
        info!("leaving the overlay");
        self.save_peers();
        self.pending.clear();
        // Leaves any partition first (a leader frees its members), then the overlay.
        self.input(Input::Shutdown);
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
        self.feed(|node, now| node.handle(now, input));
    }

    /// Runs one step of the node at the current time, then carries out its outputs.
    fn feed(&mut self, step: impl FnOnce(&mut Node<NodeId>, Millis)) {
        let now = self.now();
        step(&mut self.node, now);
        while let Some(out) = self.node.poll_output() {
            match out {
                Output::Send { to, msg } => self.send(to.0, &msg),
                Output::Migrate { vm, to } => self.start_migration(vm, to),
                Output::Overlay(e) => self.on_overlay_event(e),
                Output::Isp(e) => self.on_isp_event(e),
                Output::Solve(job) => self.start_solve(job),
                Output::Ha(o) => self.on_ha_output(o),
            }
        }
    }

    /// Runs a partition's solve on a blocking thread: an exact search may take its whole
    /// budget (seconds), and meanwhile this loop answers probes and sends keep-alives.
    fn start_solve(&mut self, job: isp::SolveJob<NodeId>) {
        let (hosts, vms) = job.size();
        debug!(
            hosts,
            vms,
            ticket = job.ticket,
            "solving off the event loop"
        );
        let tx = self.done_tx.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let answer = job.run();
            let secs = started.elapsed().as_secs_f64();
            let _ = tx.send(Done::Solved {
                answer: Box::new(answer),
                secs,
            });
        });
    }

    fn send(&mut self, to: PeerId, msg: &Message<NodeId>) {
        if let Message::Ha(dvms_core::ha::Message::Start { vm, definition, .. }) = msg {
            self.learn_vm_name(*vm, definition);
        }
        match protocol::encode_message(msg) {
            Ok(bytes) => {
                let n = bytes.len() as u64;
                let dialed = self.send_bytes(to, bytes);
                if let Message::Overlay(m) = msg {
                    let kind = vec![("kind", m.kind())];
                    if dialed {
                        self.metrics
                            .overlay_messages_dialed
                            .get_or_create(&kind)
                            .inc();
                    }
                    self.metrics
                        .overlay_bytes_sent
                        .get_or_create(&kind)
                        .inc_by(n);
                    self.metrics
                        .overlay_messages_sent
                        .get_or_create(&kind)
                        .inc();
                }
            }
            Err(e) => warn!(%to, "message not sent: {e}"),
        }
    }

    /// Where to dial `peer`: the addresses its overlay record or the address book has.
    fn dial_addresses(&self, peer: &NodeId) -> Vec<Multiaddr> {
        self.node
            .membership()
            .member(peer, 0)
            .map(|m| m.addrs.iter().filter_map(|a| a.parse().ok()).collect())
            .filter(|a: &Vec<Multiaddr>| !a.is_empty())
            .or_else(|| self.addresses.get(&peer.0).map(<[Multiaddr]>::to_vec))
            .unwrap_or_default()
    }

    /// Sends `bytes` to `to`; true if there was no connection to it (one is dialed).
    fn send_bytes(&mut self, to: PeerId, bytes: Vec<u8>) -> bool {
        // Connected: the connection is used. Otherwise dial the addresses it gossiped.
        let dialed = !self.swarm.is_connected(&to);
        let addrs = if dialed {
            self.dial_addresses(&NodeId(to))
        } else {
            Vec::new()
        };
        let id = self
            .swarm
            .behaviour_mut()
            .messages
            .send_request_with_addresses(&to, Frame::Bytes(bytes), addrs);
        self.pending.insert(id);
        self.metrics.sent.inc();
        dialed
    }

    /// While this node knows no peer: dials the bootstrap addresses and the peers it
    /// knew before a restart, so that a node that started first, or restarted, finds
    /// the others. A node that knows peers dials nobody here (each would otherwise
    /// cost the bootstrap host a handshake every round), and saves its peers about
    /// once a minute.
    fn dial_bootstrap(&mut self) {
        if !self.node.membership().is_empty() {
            if self.peers_saved_at.elapsed() >= PEER_CACHE_EVERY {
                self.save_peers();
            }
            return;
        }
        let remembered = self.remembered.iter().cloned();
        for addr in self.bootstrap.clone().into_iter().chain(remembered) {
            if self.listen_addrs.contains(&addr)
                || self.bootstrap_peers.get(&addr) == Some(&self.me)
            {
                continue;
            }
            debug!(%addr, "dialing a bootstrap or remembered peer");
            if let Err(e) = self.swarm.dial(addr.clone()) {
                debug!(%addr, "cannot dial: {e}");
            }
        }
    }

    /// Keeps the addresses of the peers in this node's views ([`peer_cache`]).
    fn save_peers(&mut self) {
        self.peers_saved_at = Instant::now();
        let now = self.now();
        let addrs: Vec<Multiaddr> = self
            .node
            .membership()
            .members(now)
            .iter()
            .flat_map(|m| {
                let id = m.id.0;
                m.addrs
                    .iter()
                    .filter_map(|a| a.parse::<Multiaddr>().ok())
                    .map(move |a| without_p2p(&a).with(Protocol::P2p(id)))
                    .take(2)
            })
            .take(peer_cache::MAX_ADDRS)
            .collect();
        if !addrs.is_empty() {
            self.remembered = addrs.clone();
            peer_cache::save(&self.peer_cache, &addrs);
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
                let mut bootstrap = false;
                if endpoint.is_dialer() {
                    let addr = without_p2p(endpoint.get_remote_address());
                    if self.bootstrap.contains(&addr) {
                        self.bootstrap_peers.insert(addr, peer_id);
                        bootstrap = true;
                    }
                }
                // Greet bootstrap peers, or anyone while alone; other connections carry
                // the overlay's own exchanges and probes already.
                if bootstrap || self.node.membership().is_empty() {
                    self.input(Input::Seed(NodeId(peer_id)));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                cause,
                num_established,
                ..
            } => {
                debug!(peer = %peer_id, ?cause, "connection closed");
                if num_established == 0 {
                    self.last_rtt.remove(&peer_id);
                }
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
                    self.last_rtt.insert(ev.peer, rtt_ms);
                    self.input(Input::Rtt {
                        peer: NodeId(ev.peer),
                        rtt_ms,
                    });
                    self.metrics
                        .vivaldi_error
                        .set(self.node.membership().error());
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(ev)) => {
                self.p2p_metrics.record(&ev);
                if let libp2p::identify::Event::Received { peer_id, info, .. } = ev {
                    let addrs: Vec<String> =
                        info.listen_addrs.iter().map(|a| a.to_string()).collect();
                    self.addresses.learn(peer_id, &addrs);
                    self.own_addresses.learn(peer_id, &addrs);
                    let waiting: Vec<VmId> = self
                        .awaiting_address
                        .iter()
                        .filter(|(_, to)| to.0 == peer_id)
                        .map(|(vm, _)| *vm)
                        .collect();
                    for vm in waiting {
                        self.awaiting_address.remove(&vm);
                        self.start_migration(vm, NodeId(peer_id));
                    }
                    for addr in info
                        .listen_addrs
                        .into_iter()
                        .take(overlay::message::MAX_ADDRS)
                    {
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

    /// A request from a peer: decoded and validated, given to the node, acknowledged.
    fn on_request(&mut self, peer: PeerId, request: Frame) -> Ack {
        let bytes = match request {
            Frame::Invalid(reason) => {
                warn!(%peer, "dropped an incoming message: {reason}");
                self.dropped("unreadable");
                return Ack::Rejected(reason);
            }
            Frame::Bytes(b) => b,
        };
        match protocol::decode_message(&bytes) {
            Ok(Message::Isp(_)) if self.sched.is_none() => {
                self.dropped("not_scheduling");
                Ack::Rejected("this daemon does not schedule".into())
            }
            Ok(Message::Ha(_)) if !self.node.ha().config().enabled => {
                self.dropped("ha_off");
                Ack::Rejected("this daemon does not run HA".into())
            }
            Ok(msg) => {
                self.metrics.received.inc();
                self.learn_addresses(&msg);
                self.input(Input::Message {
                    from: NodeId(peer),
                    msg,
                });
                Ack::Ok
            }
            Err(e) => {
                warn!(%peer, bytes = bytes.len(), "dropped a malformed message: {e}");
                self.dropped("malformed");
                Ack::Rejected(e.to_string())
            }
        }
    }

    /// Remembers where the nodes named in a message can be reached.
    fn learn_addresses(&mut self, msg: &Message<NodeId>) {
        match msg {
            Message::Overlay(overlay::Message::Exchange {
                me, sample, near, ..
            }) => {
                for r in std::iter::once(me).chain(sample).chain(near) {
                    self.addresses.learn(r.id.0, &r.addrs);
                }
            }
            Message::Isp(isp::Message::Lead { dossier } | isp::Message::Merge { dossier, .. }) => {
                for c in &dossier.known {
                    self.addresses.learn(c.id.0, &c.addrs);
                }
            }
            _ => {}
        }
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
                let ack = self.on_request(peer, request);
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
                // Not an RTT sample for Vivaldi: each request opens a stream and negotiates
                // its protocol, about half a round trip more than the network's (measured
                // 44 ms for 30 ms on the testbed); libp2p ping on the same connections is.
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
            .take(overlay::message::MAX_ADDRS)
            .map(|a| a.to_string())
            .collect();
        self.node.membership_mut().set_addrs(addrs);
    }

    /// Samples the hypervisor off the event loop (libvirt calls block).
    fn start_sample(&mut self) {
        let Some(s) = &mut self.sched else { return };
        if s.sampling {
            return;
        }
        s.sampling = true;
        let hv = s.hv.clone();
        let tx = self.done_tx.clone();
        let ha = self.node.ha().config().enabled;
        tokio::task::spawn_blocking(move || {
            let sample = hv.sample();
            let definitions = match &sample {
                // None for a paused domain (an incoming migration: the VM runs on its
                // source until it ends): HA never restarts it.
                Ok(h) if ha => {
                    let running: Vec<_> =
                        h.vms.iter().filter(|v| !v.pinned).map(|v| v.id).collect();
                    Some(hv.definitions(&running))
                }
                _ => None,
            };
            let _ = tx.send(Done::Sample(sample, definitions));
        });
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Solved { answer, secs } => {
                info!(secs, "solve finished");
                self.metrics.solve_seconds.observe(secs);
                self.input(Input::Solved(*answer));
            }
            Done::Sample(result, definitions) => {
                let Some(s) = &mut self.sched else { return };
                s.sampling = false;
                match result {
                    Ok(h) => {
                        if let Some(d) = definitions {
                            // Before the sample: its catalog carries them.
                            self.input(Input::Definitions(d));
                        }
                        let Some(s) = &mut self.sched else { return };
                        self.metrics.host_load.set(h.load());
                        s.load_history.push_back((wall_ms(), h.load()));
                        if s.load_history.len() > LOAD_HISTORY {
                            s.load_history.pop_front();
                        }
                        s.host = Some(h.clone());
                        self.input(Input::Monitor(h));
                    }
                    Err(e) => {
                        warn!("cannot sample the hypervisor: {e}");
                        self.metrics.monitor_errors.inc();
                        self.input(Input::HypervisorDown);
                    }
                }
            }
            Done::Migrated {
                vm,
                result,
                dry_run,
            } => self.on_migrated(vm, result, dry_run),
            Done::Ha(input) => self.input(Input::Ha(*input)),
            Done::AddressWaitOver { vm } => {
                if let Some(to) = self.awaiting_address.remove(&vm) {
                    self.on_done(Done::Migrated {
                        vm,
                        result: Err(format!(
                            "{to} did not identify itself within {ADDRESS_WAIT:?}"
                        )),
                        dry_run: false,
                    });
                }
            }
        }
    }
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
