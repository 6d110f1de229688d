//! `shoal node` (its flags into [`shoal_node::daemon::NodeOptions`]), `shoal mesh init`, and
//! `shoal run --join` (this process a node of the mesh for the length of one run).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use shoal_blobs::{Durability, Store};

use super::{BackendArg, EXIT_JOB_FAILED, NodeArgs, RunArgs};
use shoal_node::run::{BackendChoice, RunOptions};

fn backend_choice(arg: BackendArg) -> BackendChoice {
    arg.choice()
}

pub(super) fn node_options(store: &Store, args: NodeArgs) -> Result<shoal_node::daemon::NodeOptions> {
    let addr = |what: &str, text: &str| -> Result<libp2p::Multiaddr> {
        text.parse().with_context(|| format!("{what} `{text}` is not a multiaddr; write e.g. /ip4/127.0.0.1/tcp/7171"))
    };
    let listen = args.listen.iter().map(|a| addr("--listen", a)).collect::<Result<Vec<_>>>()?;
    let join = args.join.iter().map(|a| addr("--join", a)).collect::<Result<Vec<_>>>()?;
    let allow = if args.allow.is_empty() {
        None
    } else {
        Some(
            args.allow
                .iter()
                .map(|p| p.parse().with_context(|| format!("--allow `{p}` is not a peer id (12D3Koo...)")))
                .collect::<Result<_>>()?,
        )
    };
    let mut labels = std::collections::BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l.split_once('=').with_context(|| format!("--label `{l}`: write KEY=VALUE"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    if args.replicas == 0 || args.replicas > 16 {
        bail!("--replicas is 1 to 16 (nodes keeping each output)");
    }
    let http_hosts = args
        .http_hosts
        .iter()
        .map(|h| shoal_node::daemon::auth::Hosts::parse_name(h).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let upload_bytes_per_day = shoal_dag::parse_size(&args.explorer_upload_per_day).map_err(|e| {
        anyhow::anyhow!("--explorer-upload-per-day `{}`: {e} (write e.g. 256MiB)", args.explorer_upload_per_day)
    })?;
    let size = |flag: &str, text: &str| {
        shoal_dag::parse_size(text).map_err(|e| anyhow::anyhow!("--{flag} `{text}`: {e} (write e.g. 4GiB)"))
    };
    let upload_bytes_max = size("upload-size-max", &args.upload_size_max)?;
    let dag_bytes_max = usize::try_from(size("dag-size-max", &args.dag_size_max)?)?;
    let trusted = args
        .trust_node
        .iter()
        .map(|n| {
            let bytes = hex::decode(n).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
            bytes.with_context(|| format!("--trust-node `{n}`: write a node id, 64 hex digits (`shoal peers --json`)"))
        })
        .collect::<Result<_>>()?;
    if args.cache_agree == 0 {
        bail!("--cache-agree is at least 1 (runs by different nodes with the same outputs)");
    }
    let cache_trust = shoal_node::daemon::CacheTrust { agree: args.cache_agree, trusted };
    Ok(shoal_node::daemon::NodeOptions {
        cache_trust,
        store_bytes_max: args.store_size_max.as_deref().map(|m| size("store-size-max", m)).transpose()?,
        listen,
        join,
        http: args.http,
        blobs: args.blobs,
        mesh_key: args.mesh_key.unwrap_or_else(|| store.home().join("mesh.key")),
        allow,
        mdns: args.mdns,
        relay_server: args.relay_server,
        autonat_private_ips: args.autonat_private_ips,
        run: RunOptions {
            backend: backend_choice(args.backend),
            json: true,
            use_cache: true,
            cores: args.cores,
            warm_vms: args.warm_vms,
            records: Durability::Now,
            dag_bytes_max,
            test_flip_outputs: args.test_flip_outputs,
            transfers: args.transfers.limits()?,
        },
        labels,
        speed: args.speed,
        memory_bytes: args.memory.as_deref().map(|m| size("memory", m)).transpose()?,
        settings: shoal_mesh::Settings {
            replicas: args.replicas,
            dag_topic_nodes: args.dag_topic_nodes,
            dag_topics_above_nodes: args.dag_topics_above_nodes,
            core: shoal_mesh::core::CoreConfig {
                lease_ms: args.lease_ms,
                claim_stagger_ms: args.claim_stagger_ms,
                ledger_retention_ms: args.ledger_retention_s * 1000,
                ..Default::default()
            },
            ..Default::default()
        },
        submit_replication_timeout_s: args.submit_replication_timeout_s,
        ready_file: args.ready_file,
        test_partitions: args.test_partitions,
        clock_from_mesh: args.clock_from_mesh,
        protocol: args.test_protocol_version,
        test_clock_offset_ms: args.test_clock_offset_ms,
        shutdown: None,
        http_hosts,
        http_auth: args.http_auth,
        http_limits: shoal_node::daemon::serve::HttpLimits {
            connections_max: usize::try_from(args.http_connections_max).unwrap_or(usize::MAX),
            header_timeout_ms: args.http_header_timeout_ms,
        },
        explorer: shoal_node::explorer::PublicOptions {
            enabled: args.explorer_public,
            runs_per_minute: args.explorer_runs_per_minute,
            runs_queued_max: args.explorer_runs_queued_max as usize,
            upload_bytes_per_day,
            disk_free_percent_min: args.explorer_disk_free_min_percent,
            keep_days: args.explorer_keep_days,
            provenance: args.explorer_provenance.clone(),
        },
        upload_bytes_max,
        dag_bytes_max,
        local_upload_bytes_max: shoal_dag::parse_size(&args.local_upload_bytes_max).map_err(|e| {
            anyhow::anyhow!("--local-upload-bytes-max `{}`: {e} (write e.g. 64GiB)", args.local_upload_bytes_max)
        })?,
    })
}

pub(super) fn mesh_init(path: &Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!("{} exists; copy it to the other nodes, or pass --force to make a new one", path.display());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    shoal_node::daemon::write_mesh_key(path)?;
    println!("{}", path.display());
    eprintln!("wrote a new mesh key; copy it to every node (`shoal node --mesh-key PATH`)");
    Ok(())
}

/// How long `shoal run --join` waits for its embedded node to listen, in seconds.
const EMBEDDED_NODE_START_S: u64 = 30;

/// `shoal run DAG --join ADDR`: this process becomes a node of the mesh for the length of the run.
pub(super) async fn run_in_mesh(store: Store, args: RunArgs, opts: RunOptions) -> Result<ExitCode> {
    let (dag, json) = (args.dag.clone(), args.json);
    let target = args.provenance.target();
    let repo = match &target {
        Some(t) => {
            let repo = shoal_node::provenance::Repo::open(&t.repo)?;
            repo.check_ready()?;
            Some(repo)
        }
        None => None,
    };
    let ok = with_embedded_node(store, &args.join, args.mesh_key.clone(), opts, move |client| -> Result<bool> {
        let (ok, hash) = shoal_node::client::submit_and_wait(client, &dag, None, json)?;
        if let (Some(repo), Some(t)) = (&repo, &target) {
            shoal_node::provenance::node::commit_submitted(client, repo, &dag, &hash, "shoal run", t.push)?;
        }
        match shoal_node::client::hand_off(client, &hash) {
            Ok(n) => tracing::debug!(outputs = n, "handed this node's outputs to peers before leaving"),
            Err(e) => tracing::warn!("could not hand this node's outputs to a peer before leaving: {e:#}"),
        }
        Ok(ok)
    })
    .await?;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_JOB_FAILED) })
}

/// Runs `work` against the HTTP API of a node this process starts for it (joined through
/// `join`, with `store`), then stops the node.
pub(super) async fn with_embedded_node<T: Send + 'static>(
    store: Store,
    join: &[String],
    mesh_key: Option<std::path::PathBuf>,
    opts: RunOptions,
    work: impl FnOnce(&shoal_node::client::Client) -> Result<T> + Send + 'static,
) -> Result<T> {
    let tmp = tempfile::tempdir()?;
    let ready = tmp.path().join("ready.json");
    let join = join
        .iter()
        .map(|a| a.parse().with_context(|| format!("--join `{a}` is not a multiaddr (/ip4/HOST/tcp/PORT/p2p/ID)")))
        .collect::<Result<Vec<libp2p::Multiaddr>>>()?;
    let shutdown = std::sync::Arc::new(tokio::sync::Notify::new());
    let node_opts = shoal_node::daemon::NodeOptions {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("static multiaddr")],
        join,
        http: "127.0.0.1:0".parse().expect("static address"),
        blobs: "127.0.0.1:0".parse().expect("static address"),
        mesh_key: mesh_key.unwrap_or_else(|| store.home().join("mesh.key")),
        allow: None,
        cache_trust: Default::default(),
        store_bytes_max: None,
        mdns: false,
        relay_server: false,
        autonat_private_ips: false,
        run: opts,
        labels: Default::default(),
        speed: None,
        memory_bytes: None,
        settings: shoal_mesh::Settings::default(),
        submit_replication_timeout_s: shoal_node::daemon::SUBMIT_REPLICATION_TIMEOUT_S_DEFAULT,
        ready_file: Some(ready.clone()),
        test_partitions: false,
        clock_from_mesh: false,
        protocol: shoal_mesh::wire::PROTOCOL_VERSION,
        test_clock_offset_ms: 0,
        shutdown: Some(shutdown.clone()),
        http_hosts: Vec::new(),
        http_auth: false,
        upload_bytes_max: shoal_node::daemon::UPLOAD_BYTES_MAX_DEFAULT,
        dag_bytes_max: shoal_node::daemon::DAG_BYTES_MAX_DEFAULT,
        http_limits: Default::default(),
        explorer: shoal_node::explorer::PublicOptions::default(),
        local_upload_bytes_max: shoal_node::daemon::LOCAL_UPLOAD_BYTES_MAX_DEFAULT,
    };
    let node = tokio::spawn(shoal_node::daemon::run_node(store, node_opts));
    let start = std::time::Instant::now();
    let http = loop {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Ok(file) = serde_json::from_str::<shoal_node::api::NodeFile>(&text)
        {
            break file.http;
        }
        if node.is_finished() {
            return match node.await? {
                Err(e) => Err(e),
                Ok(()) => bail!("the embedded node stopped before it listened"),
            };
        }
        if start.elapsed() > std::time::Duration::from_secs(EMBEDDED_NODE_START_S) {
            bail!("the embedded node did not start in {EMBEDDED_NODE_START_S} s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // Give the mesh a moment to hear of us, so ranks and fetches include this node's peers.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let result = tokio::task::spawn_blocking(move || -> Result<T> {
        // The embedded node's API is on loopback without tokens; the token (if any) is for peers.
        let client = shoal_node::client::Client::new(http, shoal_node::tokens::client_secret(None)?);
        work(&client)
    })
    .await;
    shutdown.notify_one();
    node.await??;
    result?
}
