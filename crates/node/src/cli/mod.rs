//! The command tree. Each subcommand parses its arguments into a typed value and calls one function;
//! the work lives in the libraries and in `run`.
//!
//! This file holds the clap types and the dispatch; the commands' work is in the sub-modules by
//! family: `store.rs` (get, log, show, blob, image, gc: on the store, or through the node holding
//! it), `node.rs` (`shoal node`, `mesh init`, `run --join`), `live.rs` (`shoal live`: the live
//! system's supervisor, its default config, prepare-disk), `token.rs`, and `remote.rs` (submit,
//! status, watch, cancel, peers: a node's HTTP API).

mod live;
mod node;
mod provenance;
mod remote;
mod store;
mod token;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use shoal_blobs::{Durability, Store};

use node::{mesh_init, node_options, run_in_mesh};
use remote::client_command;
use shoal_node::run::{self, BackendChoice, RunOptions};
use store::{dispatch_store_command, held_command};
use token::token_command;

pub use shoal_node::{EXIT_ERROR, EXIT_JOB_FAILED};

#[derive(Parser, Debug)]
#[command(name = "shoal", version, about = "Run DAGs of container jobs, isolated, content-addressed and cached")]
struct Cli {
    /// Where the store lives (blobs, metadata, materialized root filesystems).
    #[arg(long, global = true, env = "SHOAL_HOME")]
    home: Option<PathBuf>,
    /// Largest size one layer of an image may expand to when imported, pulled, built or made by a
    /// job, e.g. 32GiB (a small gzip can expand to gigabytes of zeros).
    #[arg(long, global = true, default_value = "32GiB", env = "SHOAL_IMAGE_SIZE_MAX")]
    image_size_max: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a DAG on this machine: resolve, answer from the cache what it can, run the rest.
    Run(RunArgs),
    /// Write an output of a job's latest run to a file (or stdout).
    Get {
        /// Job id.
        job: String,
        /// Output name, as declared in the DAG.
        output: String,
        /// Where to write it (a file, or a directory for tree outputs); stdout when absent.
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// Ask this node (URL of its HTTP API) instead of reading the local store: it fetches the
        /// output from whichever peer holds it.
        #[arg(long, env = "SHOAL_NODE")]
        node: Option<String>,
        /// With --node: the DAG the job belongs to (default: the one DAG with this job done).
        #[arg(long)]
        dag: Option<String>,
        /// With --node: a file holding the API token (default: $SHOAL_TOKEN).
        #[arg(long, env = "SHOAL_TOKEN_FILE")]
        token_file: Option<PathBuf>,
    },
    /// Run a mesh node: gossip, claim and run jobs, serve blobs and the HTTP API, until stopped.
    Node(Box<NodeArgs>),
    /// Mesh administration.
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// Tokens for this home's node's HTTP API (needed off loopback): create, list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Submit a DAG to a node of the mesh (it keeps running after this command ends).
    Submit {
        dag: PathBuf,
        #[command(flatten)]
        node: NodeArg,
        /// Follow the DAG until every job has ended, then print the table.
        #[arg(long)]
        wait: bool,
        /// Attempts each job gets before it fails for good (default 3).
        #[arg(long)]
        max_attempts: Option<u32>,
        #[arg(long)]
        json: bool,
        /// With --wait: commit the run when the DAG ends.
        #[command(flatten)]
        provenance: ProvenanceArgs,
    },
    /// The state of a DAG's jobs across the mesh (all DAGs when none is given).
    Status {
        dag: Option<String>,
        #[command(flatten)]
        node: NodeArg,
        #[arg(long)]
        json: bool,
    },
    /// Follow the mesh's ledger live: which node claims, finishes or fails which job.
    Watch {
        dag: Option<String>,
        #[command(flatten)]
        node: NodeArg,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a DAG: its open and running jobs stop, done ones stay done.
    Cancel {
        dag: String,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Run a DAG's done jobs (or one) again on the node, without any cache, and compare with what
    /// their makers signed: a maker whose outputs differ is quarantined (its results answer no
    /// cache and it claims no job; `shoal peers` says why) and the job runs again elsewhere.
    /// Exits 1 when a result differs. Ask a node that did not make the results.
    Verify {
        dag: String,
        /// Only this job.
        job: Option<String>,
        #[command(flatten)]
        node: NodeArg,
        #[arg(long)]
        json: bool,
    },
    /// Every node of the mesh: capabilities, load, when last heard from.
    Peers {
        #[command(flatten)]
        node: NodeArg,
        #[arg(long)]
        json: bool,
    },
    /// Print the stdout and stderr of a job's latest run.
    Log {
        /// Job id, or a run record hash.
        job: String,
    },
    /// Why a job's latest run is another action than its run before (or than `--against`'s):
    /// the parts that differ, down to the files of the image and of tree inputs.
    Why {
        job: String,
        /// A run to compare with: a record (`blake3:<record>`, `shoal show` prints one) or the
        /// job's run in a provenance commit (`REPO@COMMIT`, `REPO` for its HEAD).
        #[arg(long)]
        against: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Run again what a provenance commit records (images by id, inputs by hash), then compare
    /// each output with the recorded one and this machine with the recorded machine. Exits 0
    /// when every output matches, 1 when one differs or a job fails, 2 on an error.
    Rerun(RerunArgs),
    /// Provenance repositories: commit a mesh DAG's run or an explorer permalink's.
    #[command(subcommand)]
    Provenance(ProvenanceCommand),
    /// Print a run record as JSON.
    Show {
        /// Job id (its latest run), or a run record hash.
        what: String,
    },
    /// Store bytes and read them back by hash.
    #[command(subcommand)]
    Blob(BlobCommand),
    /// Look inside stored trees (what a `blake3:<tree>/path` input names).
    #[command(subcommand)]
    Tree(TreeCommand),
    /// Outputs sent to URLs and buckets (a job's `upload`): list the outcomes, resend failed ones.
    #[command(subcommand)]
    Upload(UploadCommand),
    /// S3 with this machine's AWS credentials: presign a URL for someone without them.
    #[command(subcommand)]
    S3(S3Command),
    /// Import, pull, build and list container images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Delete what no run record, action-cache entry, pin or tagged image references.
    Gc {
        #[arg(long)]
        json: bool,
    },
    /// Open the Program Explorer (a web page that runs catalogue images on your files) of the node
    /// running with this store, starting one when none runs.
    Explore(shoal_node::explorer::ExploreArgs),
    /// The live system (a USB stick or cloud image that boots a computer into a mesh node).
    #[command(subcommand)]
    Live(LiveCommand),
    /// Check what this machine can do and say how to fix what it cannot.
    Doctor {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub(crate) struct RerunArgs {
    /// The repository, and the commit (default HEAD): `runs@3f2a9c1`, `runs@main~2`.
    what: String,
    /// Run every job, even those the action cache has a result for.
    #[arg(long)]
    no_cache: bool,
    /// Where jobs run.
    #[arg(long, value_enum, default_value_t = BackendArg::Microvm)]
    backend: BackendArg,
    /// Cores to use for jobs (default: all of this machine's).
    #[arg(long)]
    cores: Option<u32>,
    /// Fetch what this store lacks from a mesh: join through this peer (repeatable) for the
    /// length of the rerun.
    #[arg(long)]
    join: Vec<String>,
    /// With --join: the mesh key (default: $SHOAL_HOME/mesh.key).
    #[arg(long)]
    mesh_key: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ProvenanceCommand {
    /// Commit a run to a repository: a mesh DAG (`blake3:<dag>`, from the node, which may run it
    /// long after its submitter left) or an explorer permalink (`/r/<record>`: from the node
    /// named or holding this store, else from this store).
    Export {
        what: String,
        #[arg(long, value_name = "REPO")]
        repo: PathBuf,
        /// After committing, push the branch to the repository's `origin`.
        #[arg(long)]
        push: bool,
        #[command(flatten)]
        node: NodeArg,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The DAG file (JSON), or a run file (`FROM`, `RUN`, `INPUT`, `OUTPUT` lines; docs/RUNFILE.md).
    dag: PathBuf,
    #[command(flatten)]
    provenance: ProvenanceArgs,
    /// Where jobs run.
    #[arg(long, value_enum, default_value_t = BackendArg::Microvm)]
    backend: BackendArg,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Run jobs even when the action cache has their result.
    #[arg(long)]
    no_cache: bool,
    /// Cores to use for jobs (default: all of this machine's).
    #[arg(long)]
    cores: Option<u32>,
    /// MicroVMs kept booted ahead of demand for each kind of job (image, memory, cores); 0 boots
    /// one per job when it starts.
    #[arg(long, default_value_t = 1, value_parser = warm_vms_in_range)]
    warm_vms: usize,
    /// Run it over a mesh instead: join through this peer (repeatable) as a node for the length of
    /// the run, submit the DAG, follow it to the end, then leave (the mesh keeps the results).
    #[arg(long)]
    join: Vec<String>,
    /// With --join: the mesh key (default: $SHOAL_HOME/mesh.key).
    #[arg(long)]
    mesh_key: Option<PathBuf>,
    /// Largest DAG file accepted, e.g. 16MiB (its parse takes about 8 times its size in memory).
    #[arg(long, default_value = "16MiB")]
    dag_size_max: String,
    #[command(flatten)]
    transfers: TransferArgs,
}

/// Where a run is committed (`shoal run`, `shoal submit --wait`).
#[derive(Args, Debug, Clone)]
pub(crate) struct ProvenanceArgs {
    /// Commit the run to this git repository (created when it does not exist): the DAG as
    /// written and pinned, the signed records, the machines. A run that fails is committed too.
    #[arg(long, value_name = "REPO")]
    provenance: Option<PathBuf>,
    /// After committing, push the branch to the repository's `origin`.
    #[arg(long, requires = "provenance")]
    push: bool,
}

impl ProvenanceArgs {
    pub(crate) fn target(&self) -> Option<shoal_node::run::ProvenanceTarget> {
        self.provenance.clone().map(|repo| shoal_node::run::ProvenanceTarget { repo, push: self.push })
    }
}

/// Limits of URL and `s3://` inputs and of uploads (`shoal run` and `shoal node`).
#[derive(Args, Debug)]
pub(crate) struct TransferArgs {
    /// Largest URL or `s3://` input fetched, e.g. 64GiB.
    #[arg(long, default_value = "64GiB")]
    fetch_size_max: String,
    /// Longest wait for a server on one connect, read or write of a transfer, e.g. 30s; a
    /// stalled transfer fails after it and is tried again.
    #[arg(long, default_value = "30s")]
    transfer_timeout: String,
    /// Tries of each transfer, the first included (waiting 0.5 s, 1 s, 2 s ... between).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=20))]
    transfer_attempts: u32,
    /// Uploads to `s3://` larger than this go in parts, e.g. 5GiB (S3's largest single PUT).
    #[arg(long, default_value = "5GiB")]
    s3_multipart_above: String,
    /// Size of each part of a multipart upload, e.g. 64MiB (5MiB at least: S3's smallest part).
    #[arg(long, default_value = "64MiB")]
    s3_part_size: String,
}

impl TransferArgs {
    pub(crate) fn limits(&self) -> Result<shoal_node::data::TransferLimits> {
        let size = |flag: &str, v: &str| {
            shoal_dag::parse_size(v).map_err(|e| anyhow::anyhow!("--{flag} `{v}`: {e} (write e.g. 64MiB)"))
        };
        Ok(shoal_node::data::TransferLimits {
            fetch_bytes_max: size("fetch-size-max", &self.fetch_size_max)?,
            timeout_ms: shoal_dag::parse_duration_ms(&self.transfer_timeout)
                .map_err(|e| anyhow::anyhow!("--transfer-timeout `{}`: {e} (write e.g. 30s)", self.transfer_timeout))?
                .max(1),
            attempts: self.transfer_attempts,
            multipart_above_bytes: size("s3-multipart-above", &self.s3_multipart_above)?,
            part_bytes: match size("s3-part-size", &self.s3_part_size)? {
                b if b < shoal_node::data::S3_PART_BYTES_MIN => anyhow::bail!(
                    "--s3-part-size `{}`: S3 takes parts of 5MiB at least (all but the last)",
                    self.s3_part_size
                ),
                b => b,
            },
        })
    }
}

/// `--warm-vms`: 0 to [`shoal_vm::microvm::WARM_PER_KIND_MAX`].
fn warm_vms_in_range(text: &str) -> Result<usize, String> {
    let max = shoal_vm::microvm::WARM_PER_KIND_MAX;
    match text.parse::<usize>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("give a number from 0 to {max} (VMs kept booted per kind of job)")),
    }
}

/// Which node a mesh command talks to, and with which token.
#[derive(Args, Debug)]
pub(crate) struct NodeArg {
    /// The node's HTTP API (default: $SHOAL_NODE, else the node running with this store).
    #[arg(long = "node", env = "SHOAL_NODE")]
    url: Option<String>,
    /// A file holding the API token (`shoal token create` printed it); default: $SHOAL_TOKEN.
    #[arg(long, env = "SHOAL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Make a token and print its secret (shown this once; only its hash is kept).
    Create {
        /// What the token is for (letters, digits, `.`, `_`, `-`): it names it in `ls` and `revoke`.
        #[arg(long)]
        name: String,
        /// read: status, records, blobs, events; submit: read and submit, upload, cancel, explorer
        /// runs; admin: everything.
        #[arg(long, value_enum)]
        scope: shoal_node::tokens::Scope,
        /// How long it is valid: 30d, 12h, 90m, 2w (default: until revoked).
        #[arg(long)]
        expires: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List the tokens: name, scope, created, expires, last used.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: the node refuses it from its next request on.
    Revoke { name: String },
}

#[derive(Args, Debug)]
struct NodeArgs {
    #[command(flatten)]
    transfers: TransferArgs,
    /// libp2p listen address (repeatable); behind NAT, through a relay:
    /// /ip4/RELAY_IP/tcp/PORT/p2p/RELAY_ID/p2p-circuit.
    #[arg(long, default_value = "/ip4/127.0.0.1/tcp/7171")]
    listen: Vec<String>,
    /// A peer to join through, e.g. /ip4/10.0.0.5/tcp/7171/p2p/12D3Koo... (repeatable).
    #[arg(long)]
    join: Vec<String>,
    /// The HTTP API's address (loopback by default: it accepts DAGs).
    #[arg(long, default_value = "127.0.0.1:7170")]
    http: std::net::SocketAddr,
    /// The iroh blob endpoint's UDP address.
    #[arg(long, default_value = "127.0.0.1:7172")]
    blobs: std::net::SocketAddr,
    /// The mesh key file (default: $SHOAL_HOME/mesh.key, made by `shoal mesh init`).
    #[arg(long)]
    mesh_key: Option<PathBuf>,
    /// Accept only these peer ids (repeatable); default: any node holding the mesh key.
    #[arg(long = "allow")]
    allow: Vec<String>,
    /// How many nodes must have made a result with the same outputs before this node takes it
    /// from the mesh's cache (redundant runs, BOINC's way); results of this node and of
    /// `--trust-node`s count alone. 1: every member's result counts alone.
    #[arg(long, default_value_t = 1)]
    cache_agree: u32,
    /// A node (id, hex) whose results count alone in the mesh's cache, whatever `--cache-agree`
    /// says (repeatable).
    #[arg(long)]
    trust_node: Vec<String>,
    /// The most the store's blobs may take, e.g. 20GiB (default: 80 % of its file system). Over
    /// it the node evicts the least recently used results nobody needs from it; with nothing
    /// left to evict it claims no job until it is under.
    #[arg(long)]
    store_size_max: Option<String>,
    /// Find peers on the local network by mDNS (multicast on every interface; off by default).
    #[arg(long)]
    mdns: bool,
    /// Serve as a relay for mesh peers behind NAT (only peers holding the mesh key can use it).
    #[arg(long)]
    relay_server: bool,
    /// Let AutoNAT test and confirm non-global addresses too (10/8, 192.168/16, 198.18/15...),
    /// asking only relays: for a lab or a private WAN between sites. Without it a node behind NAT
    /// on such a network never learns it is private, and reserves on no relay.
    #[arg(long)]
    autonat_private_ips: bool,
    /// Where jobs run.
    #[arg(long, value_enum, default_value_t = BackendArg::Microvm)]
    backend: BackendArg,
    /// Cores offered to the mesh (default: all of this machine's).
    #[arg(long)]
    cores: Option<u32>,
    #[arg(long, default_value_t = 1, value_parser = warm_vms_in_range)]
    warm_vms: usize,
    /// Memory offered to the mesh, e.g. 2GiB (default: all of this machine's; more than it has
    /// offers all of it). Jobs asking for more are placed elsewhere.
    #[arg(long)]
    memory: Option<String>,
    /// A label jobs can require, KEY=VALUE (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// This node's speed per core, per mille of the reference core (placement prefers faster
    /// nodes); default: measured at start by a short CPU benchmark.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    speed: Option<u32>,
    /// Nodes that keep a copy of each output, the runner included. A submitted DAG's images and
    /// inputs are held by replicas - 1 other nodes (at least one) before the submit is acknowledged.
    #[arg(long, default_value_t = shoal_mesh::settings::REPLICAS)]
    replicas: usize,
    /// How long a claim on a job holds unless its node says it is alive, in ms (one `Alive` per DAG
    /// it runs jobs of, at half of it). A setting of the mesh protocol: give every node of a mesh
    /// the same.
    #[arg(long, default_value_t = shoal_mesh::core::LEASE_MS,
        value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    lease_ms: u64,
    /// How long a node waits, per place it ranks behind another for a job, before claiming it,
    /// in ms. Above the time a claim takes to reach every node, or two nodes start the job (one
    /// is stopped). A setting of the mesh protocol: give every node of a mesh the same.
    #[arg(long, default_value_t = shoal_mesh::core::CLAIM_STAGGER_MS,
        value_parser = clap::value_parser!(u64).range(0..=60_000))]
    claim_stagger_ms: u64,
    /// How long a DAG whose jobs all ended stays in the ledger after its last fact, in seconds;
    /// then its facts leave it and a summary stays (`shoal status` still answers). A setting of
    /// the mesh protocol: give every node of a mesh the same.
    #[arg(long, default_value_t = shoal_mesh::core::LEDGER_RETENTION_MS / 1000,
        value_parser = clap::value_parser!(u64).range(1..=365 * 86_400))]
    ledger_retention_s: u64,
    /// Nodes in the group that schedules a DAG submitted here, on a gossip topic of the DAG's
    /// own, when the mesh is larger than --dag-topics-above-nodes (0: every DAG on the mesh's
    /// one topic). The value the simulator validated at 1,000 and 10,000 nodes.
    #[arg(long, default_value_t = shoal_mesh::settings::DAG_TOPIC_NODES,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=4096))]
    dag_topic_nodes: usize,
    /// Meshes of more nodes than this (as this node sees them when a DAG is submitted here)
    /// give the DAG a group and a topic of its own; up to it every fact travels on one topic.
    #[arg(long, default_value_t = shoal_mesh::settings::DAG_TOPICS_ABOVE_NODES,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1_000_000))]
    dag_topics_above_nodes: usize,
    /// How long a submit may wait for other nodes to hold the DAG's images and inputs, in
    /// seconds; past it the submit is refused (the DAG would die with this node).
    #[arg(long, default_value_t = shoal_node::daemon::SUBMIT_REPLICATION_TIMEOUT_S_DEFAULT,
        value_parser = clap::value_parser!(u64).range(1..=86_400))]
    submit_replication_timeout_s: u64,
    /// Also write this node's addresses as JSON to this file once it listens.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// The largest file, directory or image archive a `shoal` command on this node's home may
    /// send it (those commands go through the node while it runs), e.g. 64GiB.
    #[arg(long, default_value = "64GiB")]
    local_upload_bytes_max: String,
    /// Serve POST /v1/test/block, which cuts this node off from given peers (for partition tests).
    #[arg(long, hide = true)]
    test_partitions: bool,
    /// Take the mesh's time when this machine's clock is wrong (no NTP, a dead CMOS battery): now
    /// is the local clock plus the median offset of the peers' announced clocks, and the node
    /// claims no job before it has heard one peer's time. Without it a node trusts its own clock
    /// and says once when the mesh's is more than a minute away.
    #[arg(long)]
    clock_from_mesh: bool,
    /// Flip the first byte of every job's stdout before it is stored (tests of `shoal verify`:
    /// a machine with failing RAM).
    #[arg(long, hide = true)]
    test_flip_outputs: bool,
    /// Claim to speak this mesh protocol version (tests of a node from an older image).
    #[arg(long, hide = true, default_value_t = shoal_mesh::wire::PROTOCOL_VERSION)]
    test_protocol_version: u32,
    /// Make this machine's clock read this many ms off (negative: behind), for tests of a PC
    /// whose clock is wrong.
    #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
    test_clock_offset_ms: i64,
    /// A name the HTTP API answers to besides its address and `localhost`, as NAME or NAME:PORT
    /// (repeatable): the name clients or a reverse proxy use. Requests naming any other host are
    /// refused (DNS rebinding).
    #[arg(long = "http-host")]
    http_hosts: Vec<String>,
    /// Require API tokens on loopback too (they are always required on other addresses).
    #[arg(long)]
    http_auth: bool,
    /// HTTP connections served at once; past it a new connection is answered 503 (`Retry-After:
    /// 1`) and closed. Lowered when the open-files limit (raised to its hard limit at start) is
    /// too small for it.
    #[arg(long, default_value_t = shoal_node::daemon::serve::CONNECTIONS_MAX_DEFAULT as u64,
        value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    http_connections_max: u64,
    /// How long an HTTP connection may take to send a request's headers, or stay idle between
    /// requests, before it is closed, in ms.
    #[arg(long, default_value_t = shoal_node::daemon::serve::HEADER_TIMEOUT_MS_DEFAULT,
        value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    http_header_timeout_ms: u64,
    /// Anyone may use the Program Explorer (the page and runs of catalogue entries, never with a
    /// network), within the limits below; everything else needs a token.
    #[arg(long)]
    explorer_public: bool,
    /// Anonymous explorer runs one address may start per minute.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    explorer_runs_per_minute: u32,
    /// Anonymous explorer runs in progress at once, over all clients; more get 429.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    explorer_runs_queued_max: u32,
    /// Bytes one address may upload to the explorer per day (UTC), e.g. 256MiB.
    #[arg(long, default_value = "256MiB")]
    explorer_upload_per_day: String,
    /// Anonymous explorer runs are refused while the store's file system has less free space than
    /// this, in percent.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=100))]
    explorer_disk_free_min_percent: u8,
    /// Explorer runs (records and files) are kept at least this many days after their last run,
    /// so permalinks keep working; `shoal gc` keeps them until then.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    explorer_keep_days: u32,
    /// Commit every explorer run to this git repository (created when it does not exist), and
    /// open its commits at /c/<commit>.
    #[arg(long, value_name = "REPO")]
    explorer_provenance: Option<PathBuf>,
    /// Largest blob one `POST /v1/blobs` may carry, e.g. 4GiB (also refused when the store's file
    /// system has no room for it).
    #[arg(long, default_value = "4GiB")]
    upload_size_max: String,
    /// Largest DAG file a submit may carry, e.g. 16MiB.
    #[arg(long, default_value = "16MiB")]
    dag_size_max: String,
}

#[derive(Subcommand, Debug)]
enum MeshCommand {
    /// Make a new mesh key (a 32-byte pre-shared key); every node of the mesh needs a copy.
    Init {
        /// Where to write it (default: $SHOAL_HOME/mesh.key).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace an existing key (nodes holding the old one can no longer connect).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum LiveCommand {
    /// Print the default shoal.toml (every line explained): the live image's SHOAL partition
    /// carries it.
    DefaultConfig,
    /// Check a shoal.toml (as `live run` reads it) and print what it sets (never the key itself).
    CheckConfig { path: PathBuf },
    /// The live system's supervisor (busybox init respawns it): mounts the SHOAL partition and
    /// the store, sets the clock, runs `shoal node` with shoal.toml's settings and restarts it,
    /// and shows the status on tty1 and the serial console.
    Run {
        /// The root every path is under (/proc/cmdline, /sys, /dev, /run/shoal, /var/lib/shoal):
        /// a test directory instead of the live system's. Nothing is mounted unless it is `/`.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// The node's HTTP API (loopback: the status page reads it).
        #[arg(long, default_value = shoal_node::live::run::HTTP_DEFAULT)]
        http: std::net::SocketAddr,
        /// EC2-style instance metadata, asked for user data when there is no cidata volume.
        #[arg(long, default_value = shoal_node::live::cloud::METADATA_URL, hide = true)]
        metadata_url: String,
    },
    /// Make DEVICE (a whole disk) this computer's store: one ext4 partition labelled
    /// SHOAL-STORE, used by the live system from its next boot. Erases the disk.
    PrepareDisk {
        /// The whole disk, e.g. /dev/sda (`ls /sys/class/block` lists them).
        device: PathBuf,
        /// Erase a disk that has a partition table or a file system (everything on it is lost).
        #[arg(long)]
        wipe: bool,
        /// Do not ask to type the device's name first.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum BackendArg {
    /// A fresh QEMU microVM per job (KVM where the host has it, TCG otherwise).
    Microvm,
    /// Linux namespaces + overlayfs + cgroups: fast, a kernel shared with the host.
    Namespace,
    /// A microVM for every job, also those that ask for `isolation: namespace` (no job runs on
    /// this machine's kernel).
    MicrovmOnly,
}

impl BackendArg {
    pub(crate) fn choice(self) -> BackendChoice {
        match self {
            BackendArg::Microvm => BackendChoice::Microvm,
            BackendArg::Namespace => BackendChoice::Namespace,
            BackendArg::MicrovmOnly => BackendChoice::MicrovmOnly,
        }
    }
}

#[derive(Subcommand, Debug)]
enum BlobCommand {
    /// Store a file (a blob) or a directory (a tree) and print its hash.
    Put {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write a blob to a file (or stdout), or materialize a tree into a new directory.
    Get {
        hash: String,
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// List stored blobs.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Store the bytes of a URL (`https://...`, optionally `#sha256=<hex>`) or of an object read
    /// with this machine's AWS credentials (`s3://bucket/key`), and print their hash.
    Fetch {
        source: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        transfers: TransferArgs,
    },
    /// Send a stored blob to a URL (a presigned PUT) or to `s3://bucket/key`, as a job's
    /// `upload` does; prints the upload's record.
    Send {
        hash: String,
        destination: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        transfers: TransferArgs,
    },
}

#[derive(Subcommand, Debug)]
enum TreeCommand {
    /// List a tree, or the directory at PATH inside it: `shoal tree ls blake3:<hex>/lib`.
    Ls {
        /// `blake3:<tree>` or `blake3:<tree>/PATH`.
        what: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum UploadCommand {
    /// The uploads of this store's runs, newest first: where, state, HTTP status, ETag, bytes.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Send every failed upload again (of JOB alone when given); exits 1 if one still fails.
    Retry {
        job: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        transfers: TransferArgs,
    },
}

#[derive(Subcommand, Debug)]
enum S3Command {
    /// Print a presigned URL of `s3://BUCKET/KEY`: a GET (a DAG's URL input), or with --put an
    /// upload destination. It is a secret until it expires: whoever has it may read (or write).
    Presign {
        /// `s3://bucket/key`.
        object: String,
        /// A URL to PUT to, not to GET.
        #[arg(long)]
        put: bool,
        /// How long it is valid, e.g. 1h (at most 7d).
        #[arg(long, default_value = "1h")]
        expires: String,
    },
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Import an OCI layout directory, an OCI archive or a `docker save` archive.
    Import {
        path: PathBuf,
        /// Tag to give it (default: the tag recorded in the archive, if any).
        #[arg(long)]
        tag: Option<String>,
        /// The platform to import, e.g. `linux/arm64`: an index's entry for it (default: this
        /// machine's, or an index's only image). A job whose `requirements.arch` names it gets it.
        #[arg(long, value_parser = clap::value_parser!(shoal_blobs::image::ImagePlatform))]
        platform: Option<shoal_blobs::image::ImagePlatform>,
        #[arg(long)]
        json: bool,
    },
    /// Pull an image over the OCI distribution API, e.g. `127.0.0.1:5000/busybox:latest`.
    Pull {
        reference: String,
        /// Tag to give it locally (default: the reference's name and tag).
        #[arg(long)]
        tag: Option<String>,
        /// Speak plain HTTP to the registry (always so for 127.0.0.1 and localhost).
        #[arg(long)]
        insecure: bool,
        /// The platform to import, e.g. `linux/arm64`: an index's entry for it (default: this
        /// machine's, or an index's only image). A job whose `requirements.arch` names it gets it.
        #[arg(long, value_parser = clap::value_parser!(shoal_blobs::image::ImagePlatform))]
        platform: Option<shoal_blobs::image::ImagePlatform>,
        #[arg(long)]
        json: bool,
    },
    /// Build an image from a root filesystem directory (one layer), import it and tag it.
    Build {
        /// The root filesystem.
        rootfs: PathBuf,
        #[arg(long)]
        tag: String,
        /// Also keep the OCI layout written on the way, in this directory.
        #[arg(long)]
        oci_out: Option<PathBuf>,
        /// Environment of the image, `KEY=VALUE`, repeatable.
        #[arg(long = "env")]
        env: Vec<String>,
        /// Default command, repeatable (one argv element each).
        #[arg(long = "cmd")]
        cmd: Vec<String>,
        #[arg(long)]
        workdir: Option<String>,
        /// The platform its files are for, e.g. `linux/arm64` (default: this machine's).
        #[arg(long, value_parser = clap::value_parser!(shoal_blobs::image::ImagePlatform))]
        platform: Option<shoal_blobs::image::ImagePlatform>,
        #[arg(long)]
        json: bool,
    },
    /// List tagged images.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `shoal live run` logs each step of the boot on the console.
    init_tracing(if matches!(cli.command, Command::Live(LiveCommand::Run { .. })) { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// `--image-size-max`, as parsed by `dispatch`, for every store this process opens.
static IMAGE_BYTES_MAX: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(shoal_blobs::IMAGE_BYTES_MAX_DEFAULT);

async fn open_store(home: &Option<PathBuf>) -> Result<Store> {
    let home = home.clone().unwrap_or_else(Store::default_home);
    let store = Store::open(&home).await.with_context(|| format!("opening the store at {}", home.display()))?;
    store.set_image_bytes_max(IMAGE_BYTES_MAX.load(std::sync::atomic::Ordering::Relaxed));
    Ok(store)
}

/// The node holding the store at `home`, if one runs (asked off the async threads).
async fn held_by_node(home: &Path) -> Result<Option<shoal_node::held::Held>> {
    let home = home.to_path_buf();
    Ok(tokio::task::spawn_blocking(move || shoal_node::held::Held::find(&home)).await?)
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let image_bytes_max = shoal_dag::parse_size(&cli.image_size_max)
        .map_err(|e| anyhow::anyhow!("--image-size-max `{}`: {e} (write e.g. 32GiB)", cli.image_size_max))?;
    IMAGE_BYTES_MAX.store(image_bytes_max, std::sync::atomic::Ordering::Relaxed);
    let home = cli.home.clone().unwrap_or_else(Store::default_home);
    match cli.command {
        Command::Run(args) => {
            let dag_bytes_max = usize::try_from(
                shoal_dag::parse_size(&args.dag_size_max)
                    .map_err(|e| anyhow::anyhow!("--dag-size-max `{}`: {e} (write e.g. 16MiB)", args.dag_size_max))?,
            )?;
            if let Some(held) = held_by_node(&home).await? {
                if args.provenance.provenance.is_some() {
                    return Err(held.refuse(
                        &home,
                        "`shoal submit DAG --wait --provenance REPO` runs it there and commits the run",
                    ));
                }
                if !args.join.is_empty() {
                    return Err(held.refuse(
                        &home,
                        "that node is a node of its mesh already (`shoal submit DAG --wait` runs a DAG there)",
                    ));
                }
                let opts = shoal_node::held::HeldRun {
                    backend: args.backend.choice().as_str(),
                    json: args.json,
                    no_cache: args.no_cache,
                    cores: args.cores,
                    warm_vms: args.warm_vms,
                    dag_bytes_max,
                };
                return tokio::task::spawn_blocking(move || held.run(&args.dag, &opts)).await?;
            }
            let store = open_store(&cli.home).await?;
            let opts = RunOptions {
                backend: args.backend.choice(),
                json: args.json,
                use_cache: !args.no_cache,
                cores: args.cores,
                warm_vms: args.warm_vms,
                // A local run flushes the store at its end (`shutdown` below).
                records: Durability::Soon,
                dag_bytes_max,
                test_flip_outputs: false,
                transfers: args.transfers.limits()?,
            };
            if !args.join.is_empty() {
                return run_in_mesh(store, args, RunOptions { records: Durability::Now, ..opts }).await;
            }
            let result = run::run_dag_file(&store, &args.dag, &opts, args.provenance.target().as_ref()).await;
            store.shutdown().await;
            result
        }
        Command::Rerun(args) => {
            if held_by_node(&home).await?.is_some() {
                anyhow::bail!(
                    "a node holds the store at {}: rerun with another SHOAL_HOME, or through the mesh with \
                     `--join <the node's multiaddr>` from another home",
                    home.display()
                );
            }
            provenance::rerun_command(&cli.home, args).await
        }
        Command::Node(args) => {
            if let Some(held) = held_by_node(&home).await? {
                return Err(held.refuse(&home, "one node per home"));
            }
            let store = open_store(&cli.home).await?;
            let opts = node_options(&store, *args)?;
            shoal_node::daemon::run_node(store, opts).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Mesh(MeshCommand::Init { out, force }) => {
            let home = cli.home.clone().unwrap_or_else(Store::default_home);
            let path = out.unwrap_or_else(|| home.join("mesh.key"));
            mesh_init(&path, force)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { job, output, out, node: Some(url), dag, token_file } => {
            let token = shoal_node::tokens::client_secret(token_file.as_deref())?;
            let client = shoal_node::client::Client::new(url.trim_end_matches('/').to_string(), token);
            tokio::task::spawn_blocking(move || {
                shoal_node::client::get_output(&client, dag.as_deref(), &job, &output, out.as_ref())
            })
            .await??;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(cmd) => {
            let home = cli.home.clone().unwrap_or_else(Store::default_home);
            token_command(&home, cmd)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Explore(args) => {
            let home = cli.home.clone().unwrap_or_else(Store::default_home);
            tokio::task::spawn_blocking(move || shoal_node::explorer::explore(&home, args)).await?
        }
        // A permalink's record with no node named or holding the store: from this store.
        Command::Provenance(ProvenanceCommand::Export { what, repo, push, node })
            if what.starts_with("/r/") && node.url.is_none() && held_by_node(&home).await?.is_none() =>
        {
            provenance::export_local_record(&cli.home, &what, &repo, push).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit { .. }
        | Command::Provenance(_)
        | Command::Status { .. }
        | Command::Watch { .. }
        | Command::Cancel { .. }
        | Command::Verify { .. }
        | Command::Peers { .. } => {
            let home = cli.home.clone().unwrap_or_else(Store::default_home);
            tokio::task::spawn_blocking(move || client_command(&home, cli.command)).await?
        }
        Command::Live(cmd) => tokio::task::spawn_blocking(move || live::live_command(cmd)).await?,
        // It reads no store: it works beside a node as well.
        Command::Doctor { json } => shoal_node::machine::doctor(&home, json).map(|()| ExitCode::SUCCESS),
        Command::S3(S3Command::Presign { object, put, expires }) => {
            let (object, pin) = shoal_dag::location::parse_s3(&object).map_err(|e| anyhow::anyhow!("`{object}`: {e}"))?;
            if pin.is_some() {
                anyhow::bail!("a presigned URL names no pin: remove the `#...` part");
            }
            let ms = shoal_dag::parse_duration_ms(&expires)
                .map_err(|e| anyhow::anyhow!("--expires `{expires}`: {e} (write e.g. 1h)"))?;
            let config = shoal_node::data::s3::S3Config::from_environment()?;
            let verb = if put { shoal_node::data::s3::Verb::Put } else { shoal_node::data::s3::Verb::Get };
            println!("{}", config.presign(verb, &object, std::time::Duration::from_millis(ms.max(1000)))?);
            Ok(ExitCode::SUCCESS)
        }
        command => {
            if let Some(held) = held_by_node(&home).await? {
                tokio::task::spawn_blocking(move || held_command(&held, command)).await??;
                return Ok(ExitCode::SUCCESS);
            }
            let store = open_store(&cli.home).await?;
            let result = dispatch_store_command(&store, command).await;
            store.shutdown().await;
            result.map(|()| ExitCode::SUCCESS)
        }
    }
}
