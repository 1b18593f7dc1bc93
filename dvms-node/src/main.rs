//! `dvms-node`: the DVMS daemon. See `dvms-node --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dvms_node::config::{self, FileConfig, LogFormat};

#[derive(Parser)]
#[command(
    name = "dvms-node",
    version,
    about = "The DVMS daemon: joins the peer-to-peer overlay of hypervisors and reports what it sees",
    long_about = "The DVMS daemon: one per hypervisor. It joins the overlay of its peers over libp2p \
(TCP + pre-shared key + noise + yamux), keeps the member list with failure suspicion, measures \
RTTs into Vivaldi coordinates, and serves GET /status (JSON) and GET /metrics (Prometheus). \
With --libvirt-uri it also schedules: when its host's demand stays over the threshold it \
starts an iterative scheduling procedure with its peers and live-migrates VMs.\n\n\
First time: `dvms-node psk swarm.key` once for the whole cluster, copy it to every host, then \
`dvms-node run --psk-file swarm.key --identity-file id.key --bootstrap /ip4/<a peer>/tcp/7070`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run(Box<RunArgs>),
    /// Create a new pre-shared key file for a cluster (never overwrites).
    Psk { file: PathBuf },
    /// Create an identity file if missing and print its peer id (for allow-lists).
    PeerId {
        #[arg(long)]
        identity_file: PathBuf,
    },
    /// Print a running daemon's `/status` (JSON), read at the HTTP address of its
    /// configuration file with the token of its `http_token_file`: for operators on the
    /// host, and for `dvms-launch daemons status` when `/status` listens on loopback only.
    Status {
        /// The daemon's TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML configuration file; flags below override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Multiaddr to listen on [default: /ip4/0.0.0.0/tcp/7070].
    #[arg(long)]
    listen: Option<String>,
    /// Multiaddr of a peer to join through (repeatable; added to the file's list).
    #[arg(long)]
    bootstrap: Vec<String>,
    /// Pre-shared key file of the cluster (libp2p swarm key format).
    #[arg(long)]
    psk_file: Option<PathBuf>,
    /// This node's identity key; created if missing.
    #[arg(long)]
    identity_file: Option<PathBuf>,
    /// Peer id allowed to connect (repeatable); without any, every holder of the key is.
    #[arg(long)]
    allow: Vec<String>,
    /// Partition growth: locality (closest by coordinates) or ring (next on the ring).
    #[arg(long)]
    mode: Option<overlay::Mode>,
    /// Address:port of the HTTP endpoint [default: 127.0.0.1:7080].
    #[arg(long)]
    http: Option<String>,
    /// File holding a bearer token that `/status` and `/metrics` then require.
    #[arg(long)]
    http_token_file: Option<PathBuf>,
    /// Log format on stderr (filter with RUST_LOG, default info).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Probe one peer every this many ms (SWIM) [default: 500].
    #[arg(long)]
    probe_interval_ms: Option<u64>,
    /// Declare a suspected peer dead after this many ms unless it refutes [default: 2000].
    #[arg(long)]
    suspect_timeout_ms: Option<u64>,
    /// Schedule this host's VMs through its libvirt (e.g. qemu:///system); without it the
    /// daemon only runs the overlay.
    #[arg(long)]
    libvirt_uri: Option<String>,
    /// Write every scheduling event as a JSON line to this file.
    #[arg(long)]
    event_log: Option<PathBuf>,
    /// Compute and log plans but migrate nothing.
    #[arg(long)]
    dry_run: bool,
}

fn settle(args: RunArgs) -> anyhow::Result<config::Config> {
    let mut file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let context = args
        .config
        .as_ref()
        .map(|p| format!("configuration (file {} and flags)", p.display()))
        .unwrap_or_else(|| "configuration (flags)".into());
    file.listen = args.listen.or(file.listen);
    file.bootstrap.extend(args.bootstrap);
    file.psk_file = args.psk_file.or(file.psk_file);
    file.identity_file = args.identity_file.or(file.identity_file);
    if !args.allow.is_empty() {
        file.allow.get_or_insert_with(Vec::new).extend(args.allow);
    }
    file.http = args.http.or(file.http);
    file.http_token_file = args.http_token_file.or(file.http_token_file);
    file.log_format = args.log_format.or(file.log_format);
    let ov = file.overlay.get_or_insert_with(overlay::Config::default);
    if let Some(m) = args.mode {
        ov.mode = m;
    }
    if let Some(v) = args.probe_interval_ms {
        ov.probe_interval = v;
    }
    if let Some(v) = args.suspect_timeout_ms {
        ov.suspect_timeout = v;
        ov.suspect_timeout_min = ov.suspect_timeout_min.min(v);
    }
    let sched = file.scheduler.get_or_insert_with(Default::default);
    sched.libvirt_uri = args.libvirt_uri.or(sched.libvirt_uri.take());
    sched.event_log = args.event_log.or(sched.event_log.take());
    if args.dry_run {
        sched.dry_run = Some(true);
    }
    file.settle().context(context)
}

fn init_logs(format: LogFormat) {
    // HiGHS warns whenever a search stops at its time limit, which is how the daemon
    // bounds every exact solve: only its errors are shown unless RUST_LOG names it.
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let spec = if spec.contains("highs") {
        spec
    } else {
        format!("{spec},highs=error")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,highs=error"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Psk { file } => config::write_psk(&file).map(|k| {
            println!("wrote {} (fingerprint {})", file.display(), k.fingerprint());
        }),
        Command::PeerId { identity_file } => config::load_or_create_identity(&identity_file)
            .map(|(k, _)| println!("{}", k.public().to_peer_id())),
        Command::Status { config } => FileConfig::load(&config)
            .and_then(FileConfig::settle)
            .with_context(|| format!("configuration {}", config.display()))
            .and_then(|cfg| dvms_node::api::fetch(cfg.http, "/status", cfg.http_token.as_deref()))
            .map(|body| println!("{body}")),
        Command::Run(args) => settle(*args).and_then(|cfg| {
            init_logs(cfg.log_format);
            if cfg!(debug_assertions) {
                tracing::warn!(
                    "debug build (meant for tests): run clusters with the release build, cargo build --release -p dvms-node"
                );
            }
            // One thread runs the event loop and the connections (libvirt calls, solves
            // and other blocking work go to the blocking pool): the daemon's network work
            // is small, and handing each message between threads cost more CPU than the
            // work itself (futex wake-ups and context switches, in a profile of 100 idle
            // daemons).
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(dvms_node::runtime::run(cfg, shutdown_signal()))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dvms-node: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
