//! The `dvms-launch` command line. See `dvms-launch --help`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use launcher::cluster::Cluster;
use launcher::deploy::{self, DeployOptions};
use launcher::inventory::Inventory;
use launcher::request::{self, Addressing, Distribution};
use launcher::{hosts, image, libvirt, netns, ssh, testbed};

#[derive(Parser)]
#[command(
    name = "dvms-launch",
    version,
    about = "Deploy hypervisor hosts and VMs for DVMS-rs: a local testbed of real libvirt hosts, or existing hosts over SSH",
    long_about = "Deploy hypervisor hosts and VMs for DVMS-rs.\n\n\
        The `local` provider builds a testbed of N libvirt hosts on this machine (one network namespace \
        and one libvirtd each, tiny TCG guests); the `ssh` provider uses existing libvirt hosts listed in \
        a hosts file or an OAR node file. Everything after `testbed up` (or `deploy --provider ssh`) \
        reads the cluster's state directory.",
    after_help = "Examples:\n  \
        dvms-launch testbed up --hosts 3\n  \
        dvms-launch deploy --vms 30\n  \
        dvms-launch status\n  \
        dvms-launch migrate vm-1 h2\n  \
        dvms-launch exec all -- virsh -q list\n  \
        dvms-launch testbed down"
)]
struct Cli {
    /// Root of all state (testbeds, image cache, ssh clusters).
    #[arg(
        long,
        global = true,
        env = "DVMS_STATE_DIR",
        default_value = "/var/lib/dvms-launch"
    )]
    state_dir: PathBuf,
    /// Where guest images are built and cached [default: STATE_DIR/images].
    #[arg(long, global = true, env = "DVMS_IMAGE_CACHE")]
    image_cache: Option<PathBuf>,
    /// Which local testbed (1..250): several can exist at once.
    #[arg(long = "id", global = true, env = "DVMS_TESTBED", default_value_t = 1)]
    testbed: u8,
    /// Use a named ssh cluster (created by `deploy --provider ssh --cluster NAME`) instead of a testbed.
    #[arg(long, global = true, env = "DVMS_CLUSTER")]
    cluster: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create, inspect or remove a local testbed of libvirt hosts on this machine.
    #[command(subcommand)]
    Testbed(TestbedCmd),
    /// Build the testbed guest image (done by `testbed up` when needed).
    #[command(after_help = "Example:\n  dvms-launch image --force")]
    Image {
        /// Rebuild even if an image for the same inputs is cached.
        #[arg(long)]
        force: bool,
        /// Use this kernel instead of Debian's cloud kernel.
        #[arg(long)]
        kernel: Option<PathBuf>,
    },
    /// Deploy VMs: check capacity, boot in parallel, health-check, retry, write the inventory.
    Deploy(Box<DeployArgs>),
    /// Live state of every VM: host, state, guest uptime.
    #[command(
        after_help = "Examples:\n  dvms-launch status\n  dvms-launch status --json | jq '.vms[].host'"
    )]
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command on some or all hosts, in parallel.
    #[command(
        after_help = "HOSTS is `all`, a comma-separated list of host names, or `site:NAME`.\n\nExamples:\n  \
        dvms-launch exec all -- virsh -q list\n  dvms-launch exec h1,h3 -- cat /etc/libvirt/qemu.conf"
    )]
    Exec {
        hosts: String,
        /// Hosts at a time.
        #[arg(long, default_value_t = 16)]
        width: usize,
        /// Print per-host results as JSON.
        #[arg(long)]
        json: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Copy a file to some or all hosts.
    #[command(
        after_help = "Examples:\n  dvms-launch copy dvms.toml all:/etc/dvms/dvms.toml\n  dvms-launch copy x.bin h1,h2:/tmp/x.bin"
    )]
    Copy {
        file: PathBuf,
        /// HOSTS:PATH (HOSTS as for exec).
        target: String,
        #[arg(long, default_value_t = 16)]
        width: usize,
    },
    /// Live-migrate one VM to another host (peer to peer).
    #[command(after_help = "Example:\n  dvms-launch migrate vm-3 h2")]
    Migrate { vm: String, host: String },
    /// Send a command to a guest's own command port: `load PCT` (CPU load held by cpulimit
    /// inside the guest), `mem MIB RATE` (MIB of the guest's memory filled, then dirtied
    /// at RATE MiB/s by a writer, what makes live migrations long; `mem 0 0` frees it), `ping` (uptime
    /// and boot id).
    #[command(
        after_help = "Examples:\n  dvms-launch guest vm-1 load 60\n  dvms-launch guest vm-1 mem 48 16\n  dvms-launch guest vm-1 ping"
    )]
    Guest {
        vm: String,
        #[arg(required = true, num_args = 1..)]
        command: Vec<String>,
    },
    /// Stop and remove VMs (all of them with --all).
    #[command(
        after_help = "Examples:\n  dvms-launch destroy vm-1 vm-2\n  dvms-launch destroy --all"
    )]
    Destroy {
        vms: Vec<String>,
        #[arg(long, conflicts_with = "vms")]
        all: bool,
    },
    /// Run a `dvms-node` scheduler daemon on every host (keys and configurations generated).
    #[command(subcommand)]
    Daemons(DaemonsCmd),
    #[command(hide = true, subcommand)]
    Internal(InternalCmd),
}

#[derive(Subcommand)]
enum DaemonsCmd {
    /// Start a daemon on every host without one (they join one overlay and schedule
    /// their host's VMs through its libvirt). Files in <state dir>/daemons/: keys,
    /// configurations, logs, event logs (JSON lines); over SSH, copied to and run from
    /// <remote dir>/dvms/<host>/.
    #[command(
        after_help = "Examples:\n  dvms-launch daemons start\n  dvms-launch daemons start --capacity-cpu 80 --mode ring\n  dvms-launch daemons start --dry-run\n  dvms-launch daemons start --allow 12D3KooW... (a tool's peer id)\n  dvms-launch daemons start --http-bind loopback --http-token\n  dvms-launch daemons start --ha"
    )]
    Start {
        /// The dvms-node binary [default: next to dvms-launch, else on PATH].
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Partition growth: locality (closest by Vivaldi coordinates) or ring.
        #[arg(long)]
        mode: Option<String>,
        /// CPU capacity of each host, % of one core [default: what libvirt reports].
        /// Testbed hosts share this machine's cores: give each its share.
        #[arg(long)]
        capacity_cpu: Option<f64>,
        /// Compute and log plans, migrate nothing.
        #[arg(long)]
        dry_run: bool,
        /// Abort a live migration still running after this many seconds [default: 120].
        #[arg(long, value_name = "SECONDS")]
        migration_timeout: Option<u64>,
        /// Also admit this peer id (a tool or a monitor holding the key); repeatable.
        /// The daemons always admit each other and, past that, nobody.
        #[arg(long = "allow", value_name = "PEER_ID")]
        allow: Vec<String>,
        /// Where each daemon serves /status, /metrics and the live view: `host` (its
        /// cluster address, readable by the cluster's network) or `loopback` (only on the
        /// host; `daemons status` then reads it there through `dvms-node status`).
        #[arg(long, value_enum, default_value_t = launcher::daemons::HttpBind::Host)]
        http_bind: launcher::daemons::HttpBind,
        /// Require a bearer token for /status and /metrics: one random token per cluster,
        /// kept in <state dir>/daemons/http.token (the live view takes it as #token=...).
        #[arg(long)]
        http_token: bool,
        /// High availability: when a host dies its VMs are restarted on other hosts,
        /// exactly once (each host leases from its ring successors and destroys its own
        /// VMs when cut off from them for --ha-lease-ms). Needs VM disks every host can
        /// reach (the testbed's guests have none; staged images or shared storage).
        #[arg(long)]
        ha: bool,
        /// With --ha: how long a host cut off from its guardians keeps its VMs, ms.
        #[arg(long, requires = "ha", value_name = "MS")]
        ha_lease_ms: Option<u64>,
    },
    /// Stop every daemon (they leave the overlay first).
    Stop,
    /// Each daemon: pid, HTTP endpoint, members, VMs, load, role in a partition.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TestbedCmd {
    /// Create N hosts (idempotent: completes or restarts what is missing).
    #[command(after_help = "Examples:\n  dvms-launch testbed up --hosts 3\n  \
        dvms-launch testbed up --hosts 6 --sites 2 --intra-site-ms 1 --inter-site-ms 20\n  \
        dvms-launch testbed up --hosts 8 --sites 4 --latency data/country_rtt.csv.gz\n  \
        dvms-launch --id 2 testbed up --hosts 2 --ssh")]
    Up(Box<UpArgs>),
    /// Remove everything of the testbed: guests, daemons, namespaces, cgroups, files. Idempotent.
    #[command(
        after_help = "Examples:\n  dvms-launch testbed down\n  dvms-launch --id 2 testbed down"
    )]
    Down,
    /// Kill every process of one host at once, as a power cut: its daemon, libvirtd and
    /// guests (SIGKILL). `testbed up` with the same --hosts brings its libvirtd back,
    /// with none of its guests running.
    #[command(after_help = "Examples:\n  dvms-launch testbed crash h2")]
    Crash {
        /// The host, e.g. h2.
        host: String,
    },
    /// What exists of the testbed: namespaces, daemons, processes, guests.
    #[command(
        after_help = "Examples:\n  dvms-launch testbed status\n  dvms-launch --id 2 testbed status --json"
    )]
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct UpArgs {
    /// Number of hosts (h1..hN).
    #[arg(long)]
    hosts: usize,
    /// Group the hosts into K sites (contiguous blocks).
    #[arg(long, default_value_t = 1)]
    sites: usize,
    /// Site names, comma-separated (with --latency: names in the latency file, e.g. FR,DE).
    #[arg(long, value_delimiter = ',')]
    site_names: Vec<String>,
    /// Latency matrix between sites: CSV (or .csv.gz) with columns cty1,cty2,rtt_avg (the
    /// RIPE Atlas file data/country_rtt.csv.gz works). Without --site-names, the best-measured
    /// sites are used.
    #[arg(long, conflicts_with = "inter_site_ms")]
    latency: Option<PathBuf>,
    /// Round-trip time between two sites, in ms.
    #[arg(long)]
    inter_site_ms: Option<f64>,
    /// Round-trip time within a site, in ms.
    #[arg(long, default_value_t = 0.0)]
    intra_site_ms: f64,
    /// CPUs each host declares (placement checks; libvirt reports the whole machine).
    #[arg(long, default_value_t = 4)]
    host_cpus: u32,
    /// Memory each host declares, MiB.
    #[arg(long, default_value_t = 4096)]
    host_memory: u64,
    /// Also run an SSH server in each host (try the ssh provider; writes ssh/nodes and keys).
    #[arg(long)]
    ssh: bool,
    /// Guest kernel to use instead of Debian's cloud kernel.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// How hosts' libvirts talk and migrate: `tls` (qemu+tls with certificates of the
    /// testbed's own CA, migration streams encrypted) or `tcp` (plain qemu+tcp, no
    /// authentication: only on a network you trust).
    #[arg(long, value_enum, default_value_t = MigrationChannel::Tls)]
    migration_channel: MigrationChannel,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MigrationChannel {
    Tls,
    Tcp,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  dvms-launch deploy --vms 30\n  \
    dvms-launch deploy --vms 12 --memory 96 --distribution concentrated\n  \
    dvms-launch deploy --entropy-config seeds.cfg\n  \
    dvms-launch deploy --topology cluster.toml --retry-elsewhere\n  \
    dvms-launch --cluster g5k deploy --provider ssh --hosts-file $OAR_NODEFILE --vms 100 --ssh-key ~/.ssh/id_rsa")]
struct DeployArgs {
    /// Number of identical VMs vm-1..vm-M, placed by --distribution.
    #[arg(long, conflicts_with_all = ["topology", "entropy_config"], required_unless_present_any = ["topology", "entropy_config"])]
    vms: Option<usize>,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Guest memory, MiB (the testbed kernel needs at least 80).
    #[arg(long, default_value_t = 128)]
    memory: u64,
    #[arg(long, value_enum, default_value_t = Distribution::RoundRobin)]
    distribution: Distribution,
    /// TOML file: [[host]] name/cpus/memory overrides, [[vm]] name/host/vcpus/memory/count.
    #[arg(long, conflicts_with = "entropy_config")]
    topology: Option<PathBuf>,
    /// Entropy/Flauncher configuration (#list of nodes / #list of VMs / #initial configuration).
    #[arg(long)]
    entropy_config: Option<PathBuf>,
    /// Where the hosts come from.
    #[arg(long, value_enum, default_value_t = ProviderArg::Local)]
    provider: ProviderArg,
    /// ssh provider: TOML hosts file ([[host]] address = ...) or OAR node file.
    #[arg(long, required_if_eq("provider", "ssh"))]
    hosts_file: Option<PathBuf>,
    #[arg(long, default_value = "root")]
    ssh_user: String,
    #[arg(long, default_value_t = 22)]
    ssh_port: u16,
    #[arg(long)]
    ssh_key: Option<PathBuf>,
    /// known_hosts file for the hosts (else ssh's default).
    #[arg(long)]
    known_hosts: Option<PathBuf>,
    /// URI other hosts' libvirt use to reach a host for migrations; {host} = its address.
    #[arg(long, default_value = "qemu+ssh://{host}/system")]
    peer_uri: String,
    /// ssh provider: directory on the hosts for images, overlays and consoles.
    #[arg(long, default_value = "/var/lib/dvms-launch")]
    remote_dir: PathBuf,
    /// ssh provider: libvirt domain type (kvm, or qemu for TCG).
    #[arg(long, default_value = "kvm")]
    domain_type: String,
    /// Guests booting at once.
    #[arg(long, default_value_t = 6)]
    concurrency: usize,
    /// Extra attempts per VM after a failure.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// When a host is at fault (libvirt unreachable), retry its VMs on other hosts.
    #[arg(long)]
    retry_elsewhere: bool,
    /// Seconds a guest has to report up.
    #[arg(long, default_value_t = 180)]
    boot_timeout: u64,
    /// vCPUs per host CPU allowed.
    #[arg(long, default_value_t = 16)]
    vcpu_overcommit: u32,
    /// Extra guest kernel arguments (e.g. dvms.tick=100 dvms.load=20).
    #[arg(long, default_value = "")]
    kernel_args: String,
    /// qcow2 base image: each VM gets a copy-on-write overlay of it as disk.
    #[arg(long)]
    base_image: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum ProviderArg {
    Local,
    Ssh,
}

#[derive(Subcommand)]
enum InternalCmd {
    HostDaemon {
        #[arg(long)]
        netns: String,
        #[arg(long)]
        host_dir: PathBuf,
        #[arg(long)]
        cgroup: Option<String>,
    },
    Nsexec {
        #[arg(long)]
        pid: i32,
        #[arg(last = true)]
        argv: Vec<String>,
    },
    NetnsExec {
        #[arg(long)]
        netns: String,
        #[arg(last = true)]
        argv: Vec<String>,
    },
    Delay {
        #[arg(long)]
        netns: String,
        #[arg(long = "queue")]
        queues: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

impl Cli {
    fn cluster_dir(&self) -> PathBuf {
        match &self.cluster {
            Some(name) => self.state_dir.join(name),
            None => testbed::testbed_dir(&self.state_dir, self.testbed),
        }
    }
    fn image_cache(&self) -> PathBuf {
        let p = self
            .image_cache
            .clone()
            .unwrap_or_else(|| self.state_dir.join("images"));
        // Guests' definitions name files in it, which libvirt opens from elsewhere.
        std::path::absolute(&p).unwrap_or(p)
    }
    fn load_cluster(&self) -> Result<Cluster> {
        Cluster::load(&self.cluster_dir())
    }
}

fn run(cli: Cli) -> Result<i32> {
    match &cli.cmd {
        Cmd::Internal(i) => internal(i),
        Cmd::Testbed(TestbedCmd::Up(a)) => testbed_up(&cli, a),
        Cmd::Testbed(TestbedCmd::Down) => {
            // Daemons leave the overlay before their hosts go away.
            if let Ok(c) = cli.load_cluster() {
                launcher::daemons::stop(&c);
            }
            testbed::down(&cli.state_dir, cli.testbed)?;
            println!("testbed {} down", cli.testbed);
            Ok(0)
        }
        Cmd::Testbed(TestbedCmd::Crash { host }) => {
            let c = cli.load_cluster()?;
            let n = testbed::crash_host(&c, host)?;
            println!("host {host}: {n} process(es) killed");
            Ok(0)
        }
        Cmd::Testbed(TestbedCmd::Status { json }) => {
            let s = testbed::status(&cli.state_dir, cli.testbed);
            if *json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else if s.state_dir.is_none() && s.namespaces.is_empty() {
                println!("testbed {}: nothing exists", s.id);
            } else {
                println!("testbed {}: {} namespaces", s.id, s.namespaces.len());
                for h in &s.hosts {
                    let daemon = h
                        .libvirtd_pid
                        .map(|p| format!("libvirtd {p}"))
                        .unwrap_or_else(|| "libvirtd DOWN".into());
                    println!(
                        "{:<5} {:<8} {:<14} {daemon:<16} {} processes, guests: {}",
                        h.name,
                        h.site,
                        h.address,
                        h.processes,
                        h.domains.join(" ")
                    );
                }
            }
            Ok(0)
        }
        Cmd::Image { force, kernel } => {
            let img = image::ensure_testbed_image(&cli.image_cache(), kernel.as_deref(), *force)?;
            println!(
                "kernel {}\ninitrd {}",
                img.kernel.display(),
                img.initrd.display()
            );
            Ok(0)
        }
        Cmd::Deploy(a) => deploy_cmd(&cli, a),
        Cmd::Status { json } => status_cmd(&cli, *json),
        Cmd::Exec {
            hosts,
            width,
            json,
            command,
        } => {
            let c = cli.load_cluster()?;
            let sel = c.select(hosts)?;
            let results = hosts::exec_all(&sel, command, *width);
            if *json {
                println!("{}", serde_json::to_string_pretty(&results)?);
            } else {
                for r in &results {
                    let status = match (r.ok, r.code) {
                        (true, _) => "ok".to_string(),
                        (false, Some(c)) => format!("exit {c}"),
                        (false, None) => "failed".to_string(),
                    };
                    println!("== {} ({status})", r.host);
                    print!("{}", r.stdout);
                    if !r.stderr.is_empty() {
                        eprint!("{}", r.stderr);
                    }
                }
            }
            Ok(if results.iter().all(|r| r.ok) { 0 } else { 1 })
        }
        Cmd::Copy {
            file,
            target,
            width,
        } => {
            let c = cli.load_cluster()?;
            let (hosts, path) = target
                .split_once(':')
                .context("target must be HOSTS:PATH, e.g. all:/tmp/x")?;
            anyhow::ensure!(
                path.starts_with('/'),
                "the destination path must be absolute: '{path}'"
            );
            let sel = c.select(hosts)?;
            let results = launcher::util::fan_out(&sel, *width, |h| hosts::copy_to(h, file, path));
            let mut failed = 0;
            for (h, r) in sel.iter().zip(results) {
                match r {
                    Ok(()) => println!("{}: ok", h.name),
                    Err(e) => {
                        failed += 1;
                        println!("{}: FAILED: {e:#}", h.name)
                    }
                }
            }
            Ok(if failed == 0 { 0 } else { 1 })
        }
        Cmd::Migrate { vm, host } => migrate_cmd(&cli, vm, host),
        Cmd::Daemons(DaemonsCmd::Start {
            binary,
            mode,
            capacity_cpu,
            dry_run,
            migration_timeout,
            allow,
            http_bind,
            http_token,
            ha,
            ha_lease_ms,
        }) => {
            let c = cli.load_cluster()?;
            let opt = launcher::daemons::Options {
                binary: binary.clone(),
                mode: mode.clone(),
                capacity_cpu: *capacity_cpu,
                dry_run: *dry_run,
                migration_timeout_s: *migration_timeout,
                allow: allow.clone(),
                http_bind: *http_bind,
                http_token: *http_token,
                ha: *ha,
                ha_lease_ms: *ha_lease_ms,
            };
            let started = launcher::daemons::start(&c, &opt)?;
            println!(
                "{} daemon(s) started{}; files in {}",
                started.len(),
                if started.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", started.join(" "))
                },
                launcher::daemons::dir(&c).display()
            );
            if let Some(h) = c.hosts.first() {
                let fragment = launcher::daemons::token(&c)
                    .filter(|_| *http_token)
                    .map(|t| format!("#token={t}"))
                    .unwrap_or_default();
                println!(
                    "live view: http://{}/{fragment}",
                    launcher::daemons::http_of(&c, h)
                );
            }
            Ok(0)
        }
        Cmd::Daemons(DaemonsCmd::Stop) => {
            let c = cli.load_cluster()?;
            let stopped = launcher::daemons::stop(&c);
            println!("{} daemon(s) stopped", stopped.len());
            Ok(0)
        }
        Cmd::Daemons(DaemonsCmd::Status { json }) => {
            let c = cli.load_cluster()?;
            let states = launcher::daemons::status(&c);
            if *json {
                println!("{}", serde_json::to_string_pretty(&states)?);
            } else {
                for st in &states {
                    println!("{}", launcher::daemons::summary(st));
                }
            }
            Ok(0)
        }
        Cmd::Destroy { vms, all } => destroy_cmd(&cli, vms, *all),
        Cmd::Guest { vm, command } => {
            let c = cli.load_cluster()?;
            let host = libvirt::find_vm(&c, vm)?;
            let answer = hosts::guest_command(c.host(&host)?, vm, &command.join(" "))?;
            println!("{answer}");
            Ok(if answer.starts_with("err") { 1 } else { 0 })
        }
    }
}

fn internal(i: &InternalCmd) -> Result<i32> {
    match i {
        InternalCmd::HostDaemon {
            netns: ns,
            host_dir,
            cgroup,
        } => netns::exec_host_daemon(ns, host_dir, cgroup.as_deref())?,
        InternalCmd::Nsexec { pid, argv } => netns::exec_in_namespaces_of(*pid, argv)?,
        InternalCmd::NetnsExec { netns: ns, argv } => netns::exec_in_netns(ns, argv)?,
        InternalCmd::Delay { netns: ns, queues } => {
            let qs = queues
                .iter()
                .map(|q| launcher::delay::parse_queue_spec(q))
                .collect::<Result<Vec<_>>>()?;
            netns::enter_netns(&netns::netns_path(ns))?;
            launcher::delay::run(&qs)?;
        }
    }
    Ok(0)
}

fn testbed_up(cli: &Cli, a: &UpArgs) -> Result<i32> {
    anyhow::ensure!(
        (1..=250).contains(&a.hosts),
        "--hosts must be 1..250, got {}",
        a.hosts
    );
    anyhow::ensure!(
        a.sites >= 1 && a.sites <= a.hosts,
        "--sites must be between 1 and --hosts ({})",
        a.hosts
    );
    let k = if a.site_names.is_empty() {
        a.sites
    } else {
        a.site_names.len()
    };
    anyhow::ensure!(
        k <= a.hosts,
        "{k} sites for {} hosts: every site needs a host",
        a.hosts
    );
    let (names, rtt) = match &a.latency {
        Some(file) => {
            let m = rtt_matrix::RttMatrix::load(file)?;
            let names = if a.site_names.is_empty() {
                m.pick_sites(k)?
            } else {
                a.site_names.clone()
            };
            let mut rtt = m.restrict(&names)?;
            for (i, row) in rtt.iter_mut().enumerate() {
                row[i] = a.intra_site_ms;
            }
            (names, rtt)
        }
        None => {
            let names = if a.site_names.is_empty() {
                (1..=k).map(|i| format!("site{i}")).collect()
            } else {
                a.site_names.clone()
            };
            (
                names,
                rtt_matrix::uniform(k, a.intra_site_ms, a.inter_site_ms.unwrap_or(0.0)),
            )
        }
    };
    let t = Instant::now();
    let c = testbed::up(
        &cli.state_dir,
        &testbed::TestbedSpec {
            id: cli.testbed,
            hosts: a.hosts,
            site_names: names,
            site_rtt_ms: rtt,
            host_cpus: a.host_cpus,
            host_memory_mib: a.host_memory,
            ssh: a.ssh,
            tls: a.migration_channel == MigrationChannel::Tls,
            kernel: a.kernel.clone(),
            image_cache: cli.image_cache(),
        },
    )?;
    for h in &c.hosts {
        println!("{:<5} {:<8} {}", h.name, h.site, h.libvirt_uri);
    }
    println!(
        "testbed {} up: {} hosts in {:.1} s ({})",
        cli.testbed,
        c.hosts.len(),
        t.elapsed().as_secs_f64(),
        c.state_dir.display()
    );
    Ok(0)
}

fn deploy_cmd(cli: &Cli, a: &DeployArgs) -> Result<i32> {
    let cluster = match a.provider {
        ProviderArg::Local => cli.load_cluster()?,
        ProviderArg::Ssh => {
            let name = cli.cluster.clone().unwrap_or_else(|| "ssh".into());
            let defaults = ssh::SshDefaults {
                user: a.ssh_user.clone(),
                port: a.ssh_port,
                key: a.ssh_key.clone(),
                known_hosts: a.known_hosts.clone(),
                peer_uri: a.peer_uri.clone(),
            };
            let mut hosts = ssh::read_hosts(
                a.hosts_file
                    .as_deref()
                    .context("--hosts-file is required")?,
                &defaults,
            )?;
            ssh::fill_capacities(&mut hosts)?;
            let c = ssh::ssh_cluster(
                cli.state_dir.join(&name),
                hosts,
                &a.remote_dir,
                &a.domain_type,
            );
            c.save()?;
            c
        }
    };
    // The guest image follows its inputs (init script, kernel, busybox, cpulimit): found
    // in the cache, or rebuilt if one changed.
    let built =
        image::ensure_testbed_image(&cli.image_cache(), cluster.guest_kernel.as_deref(), false)?;
    let addr = Addressing {
        mac_tag: cluster.testbed_id.unwrap_or(0),
        subnet: std::net::Ipv4Addr::new(10, 200, 0, 0),
    };
    let req = if let Some(t) = &a.topology {
        request::from_topology(t, &cluster.hosts, a.distribution, &addr)?
    } else if let Some(e) = &a.entropy_config {
        request::from_entropy(e, &cluster.hosts, &addr)?
    } else {
        request::from_distribution(
            &cluster.hosts,
            a.vms.unwrap_or(0),
            a.vcpus,
            a.memory,
            a.distribution,
            &addr,
        )?
    };
    let opts = DeployOptions {
        concurrency: a.concurrency,
        retries: a.retries,
        retry_elsewhere: a.retry_elsewhere,
        boot_timeout: Duration::from_secs(a.boot_timeout),
        vcpu_overcommit: a.vcpu_overcommit,
        kernel_args: a.kernel_args.clone(),
        base_image: a.base_image.clone(),
        progress: !a.json,
    };
    let report = deploy::deploy(&cluster, &req, &built, &opts)?;
    let image = deploy::image_on_hosts(&cluster, &built);
    let inv = Inventory::of_deploy(&cluster, &req, &report, &image, a.base_image.is_some());
    let (json, csv) = inv.save(&cluster)?;
    let map_result = inv.distribute_map(&cluster);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.summary());
        println!("inventory: {} and {}", json.display(), csv.display());
    }
    if let Err(e) = map_result {
        eprintln!("warning: {e:#}");
    }
    Ok(if report.failed == 0 { 0 } else { 1 })
}

#[derive(serde::Serialize)]
struct VmStatus {
    name: String,
    host: String,
    state: String,
    uptime_s: Option<f64>,
    boot_id: Option<String>,
    ip: Option<String>,
}

fn status_cmd(cli: &Cli, json: bool) -> Result<i32> {
    let c = cli.load_cluster()?;
    let inv = Inventory::load(&c).ok();
    let listings = launcher::util::fan_out(&c.hosts, 16, |h| {
        libvirt::connect(h).and_then(|conn| libvirt::list_domains(&conn))
    });
    let mut vms = Vec::new();
    let mut down = Vec::new();
    for (h, l) in c.hosts.iter().zip(listings) {
        match l {
            Ok(doms) => {
                for d in doms {
                    let up = if d.running {
                        hosts::guest_uptime(&c, h, &d.name)
                    } else {
                        None
                    };
                    let ip = inv
                        .as_ref()
                        .and_then(|i| i.vms.iter().find(|v| v.name == d.name))
                        .map(|v| v.ip.clone());
                    vms.push(VmStatus {
                        name: d.name,
                        host: h.name.clone(),
                        state: d.state,
                        uptime_s: up.as_ref().map(|u| u.0),
                        boot_id: up.and_then(|u| u.1),
                        ip,
                    });
                }
            }
            Err(e) => down.push(serde_json::json!({"host": h.name, "error": format!("{e:#}")})),
        }
    }
    vms.sort_by_key(|v| natural_key(&v.name));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"vms": vms, "unreachable_hosts": down})
            )?
        );
    } else {
        println!(
            "{:<12} {:<6} {:<10} {:>9}  IP",
            "VM", "HOST", "STATE", "UPTIME"
        );
        for v in &vms {
            let up = v
                .uptime_s
                .map(|u| format!("{u:.0} s"))
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<12} {:<6} {:<10} {:>9}  {}",
                v.name,
                v.host,
                v.state,
                up,
                v.ip.as_deref().unwrap_or("-")
            );
        }
        for d in &down {
            println!(
                "host {} UNREACHABLE: {}",
                d["host"].as_str().unwrap_or(""),
                d["error"].as_str().unwrap_or("")
            );
        }
    }
    Ok(if down.is_empty() { 0 } else { 1 })
}

fn natural_key(s: &str) -> (String, u64) {
    let digits: String = s
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (
        s[..s.len() - digits.len()].to_owned(),
        digits.parse().unwrap_or(0),
    )
}

/// The host a VM runs on now, from libvirt.
fn migrate_cmd(cli: &Cli, vm: &str, dest: &str) -> Result<i32> {
    let c = cli.load_cluster()?;
    let to = c.host(dest)?;
    let from_name = libvirt::find_vm(&c, vm)?;
    if from_name == dest {
        println!("{vm} already runs on {dest}");
        return Ok(0);
    }
    let from = c.host(&from_name)?;
    let conn = libvirt::connect(from)?;
    let t = Instant::now();
    libvirt::migrate(&conn, vm, to)?;
    let secs = t.elapsed().as_secs_f64();
    let now = libvirt::find_vm(&c, vm)?;
    anyhow::ensure!(
        now == dest,
        "after migration {vm} runs on {now}, not {dest}"
    );
    if let Ok(mut inv) = Inventory::load(&c) {
        if let Some(v) = inv.vms.iter_mut().find(|v| v.name == vm) {
            v.host = dest.to_owned();
            v.site = to.site.clone();
        }
        inv.save(&c)?;
    }
    println!("{vm}: {from_name} -> {dest} in {secs:.2} s");
    Ok(0)
}

fn destroy_cmd(cli: &Cli, vms: &[String], all: bool) -> Result<i32> {
    let c = cli.load_cluster()?;
    anyhow::ensure!(all || !vms.is_empty(), "name the VMs to destroy, or --all");
    let mut removed = Vec::new();
    for h in &c.hosts {
        let conn = libvirt::connect(h)?;
        for d in libvirt::list_domains(&conn)? {
            if all || vms.contains(&d.name) {
                libvirt::destroy_and_undefine(&conn, &d.name)?;
                removed.push(d.name);
            }
        }
    }
    if let Ok(mut inv) = Inventory::load(&c) {
        inv.vms.retain(|v| !removed.contains(&v.name));
        inv.save(&c)?;
    }
    let missing: Vec<&String> = vms.iter().filter(|v| !removed.contains(v)).collect();
    println!("destroyed {} VMs", removed.len());
    if !missing.is_empty() {
        eprintln!(
            "not found: {}",
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(1);
    }
    Ok(0)
}
