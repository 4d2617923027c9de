//! `nimbus`: run a Hash Nimbus node.
//!
//! `nimbus --node 0 --http :2021 --cluster "1,:3031;2,:3032;3,:3033"` exactly as the seed project; every
//! other flag has a default. Any bad input exits non-zero with one clear line.
//!
//! `nimbus check --nodes 127.0.0.1:2021,127.0.0.1:2022,127.0.0.1:2023` runs concurrent clients against a
//! running cluster and checks the history for linearizability (bring your own faults meanwhile). Every run
//! uses fresh keys, so it may be repeated against the same cluster.
//!
//! `nimbus dev` starts a local cluster (3 nodes by default) as child processes and watches it; see
//! [`hash_nimbus::dev`].
//! `nimbus bench --target 127.0.0.1:2021 --workload write -c 16 --duration 10` loads a running cluster (or
//! an etcd with `--api etcd-v2`) and prints throughput, errors and latency quantiles (`--json`: one line).

use clap::{Args, Parser, Subcommand};
use hash_nimbus::config::{
    listen_addr, load_admin_token, load_cluster_token, parse_cluster, NodeConfig, ADMIN_TOKEN_ENV,
    CLUSTER_TOKEN_ENV,
};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// A Raft key-value store node. Start three with --node 0, 1 and 2 and the same --cluster.
#[derive(Parser, Debug)]
#[command(
    name = "nimbus",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Run concurrent clients against a cluster and check the history for linearizability.
    Check(CheckArgs),
    /// Start a local cluster of N nodes (child processes) and watch it; Ctrl-C stops them all.
    Dev(hash_nimbus::dev::DevArgs),
    /// Load a running cluster (or etcd through its v2 API) and report throughput and latency.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// HTTP address(es) to load, host:port (loopback only); repeat the flag or separate with commas.
    /// Connections are spread round-robin over them.
    #[arg(long, value_delimiter = ',', required = true)]
    target: Vec<String>,
    /// write, read or mixed.
    #[arg(long, default_value = "write")]
    workload: hash_nimbus::bench::Workload,
    /// Reads: linearizable, lease or stale (default linearizable; etcd-v2: linearizable = quorum=true,
    /// stale = a plain local GET).
    #[arg(long)]
    consistency: Option<hash_nimbus::bench::Consistency>,
    /// Percentage of reads in --workload mixed (default 50).
    #[arg(long)]
    read_percent: Option<u64>,
    /// Concurrent connections (one thread each), opened one at a time before the run.
    #[arg(long, short = 'c', default_value_t = 8)]
    connections: usize,
    /// Measured seconds (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Key space: keys PREFIX00000000 and up (preloaded before read and mixed runs).
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Writes go to fresh keys (never written before) instead of the key space.
    #[arg(long)]
    unique_keys: bool,
    /// Read and mixed runs: do not preload the key space (it was written before).
    #[arg(long)]
    no_preload: bool,
    /// nimbus (/set, /get) or etcd-v2 (PUT and GET /v2/keys/K).
    #[arg(long, default_value = "nimbus")]
    api: hash_nimbus::bench::Api,
    /// Per-request timeout (connect, write, read) in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Prefix of every key (A-Z a-z 0-9 - _ .).
    #[arg(long, default_value = "bench-")]
    key_prefix: String,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the summary as one JSON line.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// HTTP addresses of the nodes, comma-separated (host:port).
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// How long the clients run, in seconds.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Number of keys (each is one register in the check; keep per-key histories to a few hundred ops).
    #[arg(long, default_value_t = 32)]
    keys: usize,
    /// Per-request timeout in milliseconds; a request over it counts as indeterminate.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Percentage of operations that are writes (deletes and conditional writes included).
    #[arg(long, default_value_t = 50)]
    write_percent: u64,
    /// Routes the clients use: "seed" (/set, /get), "rest" (PUT plain, If-Match and If-None-Match, DELETE
    /// plain and If-Match, GET /v1/kv) or "all" (both).
    #[arg(long, default_value = "all")]
    mix: hash_nimbus::check::workload::Mix,
    /// Seed of the clients' random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args, Debug)]
struct NodeArgs {
    /// 0-based index into --cluster of the entry that is this node.
    #[arg(long, required_unless_present = "join")]
    node: Option<usize>,
    /// HTTP API address: ":2021" (all interfaces) or "host:port".
    #[arg(long, required = true)]
    http: Option<String>,
    /// Members as "raft_id,raft_addr" entries separated by ';', e.g. "1,:3031;2,:3032;3,:3033".
    #[arg(long, required_unless_present = "join")]
    cluster: Option<String>,
    /// Join a running cluster through any member's HTTP address, e.g. http://127.0.0.1:2021 (with --id and
    /// --raft instead of --node and --cluster). The node is added as a learner and promoted once caught up.
    #[arg(long, conflicts_with_all = ["node", "cluster"], requires_all = ["id", "raft"])]
    join: Option<String>,
    /// This node's id, with --join.
    #[arg(long, requires = "join")]
    id: Option<u64>,
    /// This node's Raft address, with --join: ":3034" or "host:port".
    #[arg(long, requires = "join")]
    raft: Option<String>,
    /// Data directory (created if missing). Default: ./nimbus-data-ID, ID being this node's raft id.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Name shared by all members; peers with another name are refused.
    #[arg(long, default_value = "nimbus")]
    cluster_name: String,
    /// File holding the cluster token, the secret every member must share (peers prove they know it in
    /// the handshake). Or set NIMBUS_CLUSTER_TOKEN. Without either, peers are not authenticated.
    #[arg(long)]
    cluster_token_file: Option<PathBuf>,
    /// File holding the admin token: the mutating /v1/cluster routes (add, promote, remove, transfer)
    /// then require "Authorization: Bearer TOKEN", and --join sends it. Or set NIMBUS_ADMIN_TOKEN.
    /// Without either, those routes are open to every HTTP client.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Free-space reserve of the data directory: while the leader's has less free space than this, it
    /// refuses client writes with 507 (reads go on; writes resume by themselves once space is freed).
    /// 0 turns the check off.
    #[arg(long, default_value_t = 64 << 20)]
    min_free_bytes: u64,
    /// "on": clients reach tiny_http through the HTTP guard and its limits (--http-max-*); "off":
    /// tiny_http listens on --http itself, with none of those limits (for measuring the guard's cost).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    http_guard: String,
    /// Length of one Raft tick in milliseconds.
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
    /// Election timeout in ticks (randomized between this and twice this).
    #[arg(long, default_value_t = 10)]
    election_ticks: u32,
    /// Heartbeat interval in ticks.
    #[arg(long, default_value_t = 1)]
    heartbeat_ticks: u32,
    /// How long a request may wait for commit before it fails with 504.
    #[arg(long, default_value_t = 5000)]
    request_timeout_ms: u64,
    /// HTTP worker threads (each serves one request at a time).
    #[arg(long, default_value_t = 64)]
    http_threads: usize,
    /// HTTP client connections served at once; one more is answered 503 and closed.
    #[arg(long, default_value_t = 1024)]
    http_max_connections: usize,
    /// Most bytes of header fields in one HTTP request head (more is answered 431).
    #[arg(long, default_value_t = 16 << 10)]
    http_max_header_bytes: usize,
    /// An HTTP request head must arrive within this many milliseconds of its first byte, and a body
    /// must make progress at least this often (else 408).
    #[arg(long, default_value_t = 10_000)]
    http_read_timeout_ms: u64,
    /// Take a snapshot after this many applied entries...
    #[arg(long, default_value_t = 10_000)]
    snapshot_entries: u64,
    /// ...or after the WAL grew by this many bytes.
    #[arg(long, default_value_t = 64 << 20)]
    snapshot_bytes: u64,
    /// Snapshot files kept on disk.
    #[arg(long, default_value_t = 2)]
    snapshots_kept: usize,
    /// Log entries kept before the newest snapshot for followers slightly behind.
    #[arg(long, default_value_t = 5_000)]
    log_keep_entries: u64,
    /// WAL segment file size; the WAL is deleted a whole segment at a time.
    #[arg(long, default_value_t = 16 << 20)]
    wal_segment_bytes: u64,
}

fn build_config(mut cli: NodeArgs) -> Result<NodeConfig, String> {
    let mut bootstrap_voters = None;
    if let Some(url) = cli.join.clone() {
        let (cluster, node, voters) =
            hash_nimbus::server::join::discover(&url, cli.id, cli.raft.as_deref())?;
        cli.cluster = Some(cluster);
        cli.node = Some(node);
        bootstrap_voters = Some(voters);
    }
    let (Some(node), Some(http), Some(cluster)) = (cli.node, cli.http, cli.cluster) else {
        return Err(
            "--node, --http and --cluster are required (or --join, --id, --raft and --http)".into(),
        );
    };
    let members = parse_cluster(&cluster)?;
    let me = members.get(node).ok_or_else(|| {
        format!(
            "--node {} is out of range: --cluster has {} entries (valid: 0..={})",
            node,
            members.len(),
            members.len() - 1
        )
    })?;
    let http_addr = listen_addr(&http).map_err(|e| format!("--http: {e}"))?;
    let data_dir = cli
        .data_dir
        .unwrap_or_else(|| PathBuf::from(format!("nimbus-data-{}", me.id)));
    let mut cfg = NodeConfig::new(
        me.id,
        members
            .iter()
            .map(|m| (m.id, m.raft_addr.clone()))
            .collect(),
        http_addr,
        data_dir,
    );
    cfg.cluster_name = cli.cluster_name;
    cfg.cluster_token = load_cluster_token(
        cli.cluster_token_file.as_deref(),
        std::env::var_os(CLUSTER_TOKEN_ENV),
    )?;
    cfg.admin_token = load_admin_token(
        cli.admin_token_file.as_deref(),
        std::env::var_os(ADMIN_TOKEN_ENV),
    )?;
    cfg.min_free_bytes = cli.min_free_bytes;
    cfg.http_guard = cli.http_guard == "on";
    cfg.tick = Duration::from_millis(cli.tick_ms);
    cfg.election_ticks = cli.election_ticks;
    cfg.heartbeat_ticks = cli.heartbeat_ticks;
    cfg.request_timeout = Duration::from_millis(cli.request_timeout_ms);
    cfg.http_threads = cli.http_threads;
    cfg.http_max_connections = cli.http_max_connections;
    cfg.http_max_header_bytes = cli.http_max_header_bytes;
    cfg.http_read_timeout = Duration::from_millis(cli.http_read_timeout_ms);
    cfg.snapshot_entries = cli.snapshot_entries;
    cfg.snapshot_bytes = cli.snapshot_bytes;
    cfg.snapshots_kept = cli.snapshots_kept;
    cfg.log_keep_entries = cli.log_keep_entries;
    cfg.wal_segment_bytes = cli.wal_segment_bytes;
    cfg.bootstrap_voters = bootstrap_voters;
    cfg.join = cli.join;
    cfg.validate()?;
    Ok(cfg)
}

/// `nimbus bench`: exit 0 after a run (whatever its error count: see the summary), 1 if the run could not
/// be made (probe or preload failed), 2 on bad flags.
fn bench(args: BenchArgs) -> ExitCode {
    use hash_nimbus::bench;
    let flags = bench::Flags {
        targets: args.target,
        api: args.api,
        workload: args.workload,
        consistency: args.consistency,
        read_percent: args.read_percent,
        connections: args.connections,
        duration_secs: args.duration,
        warmup_secs: args.warmup,
        keys: args.keys,
        value_size: args.value_size,
        unique_keys: args.unique_keys,
        no_preload: args.no_preload,
        timeout_ms: args.timeout_ms,
        key_prefix: args.key_prefix,
        seed: args.seed,
    };
    let cfg = match flags.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nimbus bench: {e}");
            return ExitCode::from(2);
        }
    };
    let mut progress: Box<dyn std::io::Write> = if args.quiet {
        Box::new(std::io::sink())
    } else {
        Box::new(std::io::stderr())
    };
    match bench::run(cfg, &mut progress) {
        Ok(o) if args.json => {
            println!("{}", bench::report::to_json(&o));
            ExitCode::SUCCESS
        }
        Ok(o) => {
            print!("{}", bench::report::to_text(&o));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nimbus bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// `nimbus check`: exit 0 if the history is linearizable, 1 if not, 2 on bad input or unreachable nodes.
fn check(args: CheckArgs) -> ExitCode {
    use hash_nimbus::check::{analyze, workload};
    use std::sync::Arc;
    let mut nodes = Vec::new();
    for n in &args.nodes {
        match hash_nimbus::config::connect_addr(n.trim_start_matches("http://")) {
            Ok(a) => nodes.push(a),
            Err(e) => {
                eprintln!("nimbus check: --nodes: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if args.clients == 0 || args.keys == 0 || args.write_percent > 100 {
        eprintln!(
            "nimbus check: --clients and --keys must be at least 1, --write-percent at most 100"
        );
        return ExitCode::from(2);
    }
    // Fresh keys for every run: the checker assumes each key starts absent, and values are only unique
    // within a run.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let cfg = Arc::new(workload::WorkloadConfig {
        nodes,
        clients: args.clients,
        keys: args.keys,
        key_prefix: format!("nimbus-check-{nonce:x}-k"),
        duration: Duration::from_secs(args.secs),
        timeout: Duration::from_millis(args.timeout_ms.max(1)),
        write_percent: args.write_percent,
        mix: args.mix,
        seed: args.seed,
        max_ops_per_client: 1_000_000,
    });
    let run = workload::Run::new();
    eprintln!(
        "running {} clients on {} keys ({}0..) for {} s...",
        cfg.clients, cfg.keys, cfg.key_prefix, args.secs
    );
    for h in workload::spawn_clients(&run, &cfg) {
        let _ = h.join();
    }
    if let Err(e) = workload::final_reads(&run, &cfg, Duration::from_secs(60)) {
        eprintln!("nimbus check: {e}");
        return ExitCode::from(2);
    }
    let records = run
        .records
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let r = analyze(&records);
    println!(
        "{} operations: {} ok, {} failed, {} indeterminate, on {} keys, {} checked; acknowledged writes \
         lost: {}\n{}",
        records.len(),
        r.ok,
        r.failed,
        r.indeterminate,
        r.keys,
        r.checked,
        r.lost_writes,
        r.by_kind_table()
    );
    if r.violations.is_empty() && r.lost_writes == 0 {
        println!("linearizable: yes");
        ExitCode::SUCCESS
    } else {
        println!("linearizable: NO (seed {})", args.seed);
        for v in &r.violations {
            println!("{v}");
        }
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Some(Sub::Check(args)) => return check(args),
        Some(Sub::Dev(args)) => return hash_nimbus::dev::run(args),
        Some(Sub::Bench(args)) => return bench(args),
        None => {}
    }
    let cfg = match build_config(cli.node) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nimbus: {e}");
            return ExitCode::from(2);
        }
    };
    // Room for --http-max-connections: the soft open-file limit is often 1,024 while the hard one is far
    // higher (the node lowers the cap, with a warning, if the limit stays too low).
    let _ = hash_nimbus::server::http_guard::raise_fd_limit();
    match hash_nimbus::server::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nimbus: {e}");
            ExitCode::from(1)
        }
    }
}
