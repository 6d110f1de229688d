//! The CLI's side of a node's HTTP API: `shoal submit`, `status`, `watch`, `cancel`, `peers`
//! and `get --node`. Blocking (ureq): these are short commands.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::human::percent_encode;
use anyhow::{Context, Result, anyhow, bail};
use serde::de::DeserializeOwned;
use shoal_dag::InputRef;
use shoal_dag::pin::JobPins;

use crate::api::{DagList, DagStatus, ErrorBody, Event, Health, JobStatus, NodeFile, Peers, StoredBlob, Submitted};

/// Longest answer read from a node that is not an output, in bytes.
const REPLY_BYTES_MAX: u64 = 64 << 20;
/// Longest an output fetched through a node may be, in bytes.
const OUTPUT_BYTES_MAX: u64 = 16 << 30;
/// How often `--wait` asks for the DAG's status, in ms.
const WAIT_POLL_MS: u64 = 200;

/// Where the node is: `--node`, `$SHOAL_NODE`, or the `node.json` a running node writes in its home.
pub fn node_url(given: Option<String>, home: &Path) -> Result<String> {
    if let Some(url) = given.filter(|u| !u.is_empty()) {
        return Ok(url.trim_end_matches('/').to_string());
    }
    let path = home.join("node.json");
    let text = std::fs::read_to_string(&path).map_err(|_| {
        anyhow!(
            "no node given and none runs with the store {}: start one with `shoal node`, or pass --node URL \
             (e.g. http://127.0.0.1:7170)",
            home.display()
        )
    })?;
    let file: NodeFile = serde_json::from_str(&text).with_context(|| {
        format!("reading {}: not a running node's file; is another program writing it?", path.display())
    })?;
    Ok(file.http)
}

pub struct Client {
    agent: ureq::Agent,
    base: String,
    /// `Authorization` for every request, when the CLI was given a token. Never logged or printed.
    authorization: Option<String>,
}

impl Client {
    /// A client of the node at `base`, sending `token` (the secret) as a bearer token if given.
    pub fn new(base: String, token: Option<String>) -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .build();
        Client {
            agent: ureq::Agent::new_with_config(config),
            base,
            authorization: token.map(|t| format!("Bearer {t}")),
        }
    }

    fn get_req(&self, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let req = self.agent.get(url);
        match &self.authorization {
            Some(a) => req.header("authorization", a),
            None => req,
        }
    }

    fn check(&self, url: &str, mut resp: ureq::http::Response<ureq::Body>) -> Result<ureq::http::Response<ureq::Body>> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let body = resp.body_mut().with_config().limit(1 << 20).read_to_string().unwrap_or_default();
        let msg = serde_json::from_str::<ErrorBody>(&body).map(|b| b.error).unwrap_or(body);
        if resp.status() == 401 && self.authorization.is_none() {
            bail!("{url}: HTTP 401: {msg}\n(this node needs a token: set SHOAL_TOKEN or pass --token-file PATH)")
        }
        bail!("{url}: HTTP {}: {msg}", resp.status())
    }

    /// The secret this client sends, for a client of another node of the same mesh.
    fn token(&self) -> Option<String> {
        self.authorization.as_deref().and_then(|a| a.strip_prefix("Bearer ")).map(str::to_string)
    }

    fn unreachable(&self, e: ureq::Error) -> anyhow::Error {
        anyhow!("cannot reach the node at {}: {e}; is `shoal node` running there?", self.base)
    }

    /// GETs `path` and reads its JSON answer as `T` (one of `crate::api`'s bodies, or a `Value`).
    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let resp = self.get_req(&url).call().map_err(|e| self.unreachable(e))?;
        let mut resp = self.check(&url, resp)?;
        Ok(resp.body_mut().with_config().limit(REPLY_BYTES_MAX).read_json()?)
    }

    /// POSTs `body` of `content_type` (the node refuses bodies of other types than a route's, and
    /// untyped ones: see `daemon::auth`); an empty body goes untyped.
    pub fn post<T: DeserializeOwned>(&self, path: &str, content_type: &str, body: &[u8]) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.post(&url);
        if !body.is_empty() {
            req = req.header("content-type", content_type);
        }
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a);
        }
        let resp = req.send(body).map_err(|e| self.unreachable(e))?;
        let mut resp = self.check(&url, resp)?;
        Ok(resp.body_mut().with_config().limit(REPLY_BYTES_MAX).read_json()?)
    }

    /// GETs `path`'s body, at most `limit` bytes.
    pub fn get_bytes(&self, path: &str, limit: u64) -> Result<Vec<u8>> {
        let mut resp = self.get_stream(path)?;
        Ok(resp.body_mut().with_config().limit(limit).read_to_vec()?)
    }

    fn get_stream(&self, path: &str) -> Result<ureq::http::Response<ureq::Body>> {
        let url = format!("{}{path}", self.base);
        let resp = self.get_req(&url).call().map_err(|e| self.unreachable(e))?;
        self.check(&url, resp)
    }
}

/// `shoal submit`: uploads the DAG's `file:` inputs, submits it, and prints its hash (or, with
/// `wait`, follows it to the end and prints every job's state).
pub fn submit(client: &Client, path: &Path, max_attempts: Option<u32>, wait: bool, json: bool) -> Result<bool> {
    submit_inner(client, path, max_attempts, wait, json).map(|(ok, _)| ok)
}

/// Submits and follows to the end: (every job done, the DAG's hash).
pub fn submit_and_wait(client: &Client, path: &Path, max_attempts: Option<u32>, json: bool) -> Result<(bool, String)> {
    submit_inner(client, path, max_attempts, true, json)
}

fn submit_inner(
    client: &Client,
    path: &Path,
    max_attempts: Option<u32>,
    wait: bool,
    json: bool,
) -> Result<(bool, String)> {
    let bytes = crate::run::read_dag_file(path, crate::daemon::DAG_BYTES_MAX_DEFAULT)?;
    // Parse here first: located errors from the file as the user wrote it.
    let crate::provenance::ParsedDag { dag, json_text: text, warnings, .. } =
        crate::provenance::parse_dag_or_run_file(&path.display().to_string(), &bytes).map_err(|d| anyhow!("{d}"))?;
    crate::output::print_warnings(&warnings);
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut pins = Vec::with_capacity(dag.jobs.len());
    for job in &dag.jobs {
        let mut pin = JobPins { id: job.id.clone(), image: None, inputs: Vec::new(), stdin: None, uploads: Vec::new() };
        let mut refs: Vec<(Option<&String>, &InputRef)> = job.inputs.iter().map(|(n, r)| (Some(n), r)).collect();
        refs.extend(job.stdin.iter().map(|r| (None, r)));
        for (name, r) in refs {
            let InputRef::File(p) = r.root() else { continue };
            let file = dir.join(p);
            if file.is_dir() {
                bail!(
                    "job `{}`: `file:{}` is a directory; `shoal submit` uploads files only: store it on the node \
                     with `shoal blob put DIR` and use the blake3: hash it prints",
                    job.id,
                    p
                );
            }
            // A FIFO or a device would be read until it ends, which /dev/zero never does.
            let meta =
                std::fs::metadata(&file).with_context(|| format!("job `{}`: reading {}", job.id, file.display()))?;
            if !meta.is_file() {
                bail!(
                    "job `{}`: `file:{}` is not a regular file ({}); `shoal submit` uploads regular files only: \
                     copy what it holds into a file and name that",
                    job.id,
                    p,
                    file.display()
                );
            }
            let bytes =
                std::fs::read(&file).with_context(|| format!("job `{}`: reading {}", job.id, file.display()))?;
            let reply: StoredBlob = client.post("/v1/blobs", "application/octet-stream", &bytes)?;
            let pinned = r.with_root(InputRef::Blake3(reply.hash)).to_json();
            match name {
                Some(n) => pin.inputs.push((n.clone(), pinned)),
                None => pin.stdin = Some(pinned),
            }
        }
        pins.push(pin);
    }
    // The node pins the rest (tags, `sha256:`) with the same rewrite and hashes its text, so a
    // DAG without `file:` inputs goes as written.
    let text = if pins.iter().any(|p| !p.inputs.is_empty() || p.stdin.is_some()) {
        shoal_dag::pin::rewrite(&text, &pins)?
    } else {
        text
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "dag.json".into());
    let mut query = format!("?name={}", percent_encode(&name));
    if let Some(n) = max_attempts {
        query.push_str(&format!("&max_attempts={n}"));
    }
    let reply: Submitted = client.post(&format!("/v1/dags{query}"), "application/json", text.as_bytes())?;
    let hash = reply.dag.to_string();
    if reply.depends_on_this_node {
        eprintln!(
            "warning: no other node of the mesh holds this DAG's images and inputs yet (none was connected): \
             if the node at {} leaves before a peer has fetched them, the DAG cannot finish",
            client.base
        );
    }
    if !wait {
        if json {
            // As a `Value`: its keys sorted, as the node sent them.
            println!("{}", serde_json::to_value(&reply)?);
        } else {
            println!("{hash}");
        }
        return Ok((true, hash));
    }
    if !json {
        eprintln!("submitted {hash}; waiting for its jobs (ctrl-c stops waiting, not the DAG)");
    }
    Ok((wait_for(client, &hash, json)?, hash))
}

/// Polls until every job is terminal, with a progress bar; prints the table (or JSON).
pub fn wait_for(client: &Client, dag: &str, json: bool) -> Result<bool> {
    let bar = indicatif::ProgressBar::new(0);
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} jobs {msg}")
            .expect("static template"),
    );
    let start = Instant::now();
    let status = loop {
        let status: DagStatus = client.get_json(&format!("/v1/dags/{dag}"))?;
        let (ended, running) = progress(&status);
        let jobs = status.jobs.len();
        bar.set_length(jobs as u64);
        bar.set_position(ended as u64);
        bar.set_message(format!("({running} running)"));
        if jobs > 0 && ended == jobs {
            break status;
        }
        std::thread::sleep(Duration::from_millis(WAIT_POLL_MS));
    };
    bar.finish_and_clear();
    let ok = status.jobs.values().all(|j| j.state == JobStatus::Done);
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"ok": ok, "dag": dag, "jobs": status.jobs}))?);
    } else {
        print_status(&status);
        eprintln!("{} in {:.1} s", if ok { "done" } else { "ended with failures" }, start.elapsed().as_secs_f64());
    }
    Ok(ok)
}

/// How many of a DAG's jobs have ended, and how many run now.
fn progress(status: &DagStatus) -> (usize, usize) {
    let ended = status.jobs.values().filter(|j| j.state.is_terminal()).count();
    let running = status.jobs.values().filter(|j| j.state == JobStatus::Claimed).count();
    (ended, running)
}

/// The table of a DAG's jobs: state, the node that ran or runs it, its record, why it failed.
pub fn print_status(status: &DagStatus) {
    println!("{}", status_table(status));
    for u in &status.uploads {
        println!("upload {}", u.line());
    }
}

fn status_table(status: &DagStatus) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(["job", "state", "node", "record", "note"]);
    let short = |s: &str, n: usize| s.trim_start_matches("blake3:").chars().take(n).collect::<String>();
    for (id, j) in &status.jobs {
        let note = j
            .reason
            .clone()
            .or_else(|| j.failures.last().map(|s| s.lines().next().unwrap_or("").to_string()))
            .or_else(|| j.cached_from.as_deref().map(|m| format!("cached: made by {}", short(m, 12))))
            .unwrap_or_default();
        table.add_row([
            id.clone(),
            j.state.to_string(),
            j.node.as_deref().map(|n| short(n, 12)).unwrap_or_default(),
            j.record.map(|r| short(&r.to_string(), 12)).unwrap_or_default(),
            note,
        ]);
    }
    table
}

/// `shoal watch`: every ledger event of the DAG (all DAGs when none given) as it happens.
pub fn watch(client: &Client, dag: Option<&str>, json: bool) -> Result<()> {
    let resp = client.get_stream("/v1/events")?;
    let reader = BufReader::new(resp.into_body().into_reader());
    let want = dag.map(|d| if d.starts_with("blake3:") { d.to_string() } else { format!("blake3:{d}") });
    for line in reader.lines() {
        let line = line.context("the node closed the event stream")?;
        let Some(data) = line.strip_prefix("data:") else { continue };
        // Not every line is an event: a `lagged` notice, or an event of a newer node.
        let Ok(ev) = serde_json::from_str::<Event>(data.trim()) else { continue };
        if want.as_deref().is_some_and(|w| ev.dag.to_string() != w) {
            continue;
        }
        if json {
            // As a `Value`: its keys sorted, as this command always printed them.
            println!("{}", serde_json::to_value(&ev)?);
        } else {
            println!("{}", event_line(&ev));
        }
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// An event as `shoal watch` prints it.
fn event_line(ev: &Event) -> String {
    let node: String = ev.node.chars().take(12).collect();
    format!(
        "{:<10} {:<20} on {node}  {}",
        ev.kind.as_str(),
        ev.job.as_deref().unwrap_or("-"),
        ev.detail.as_deref().unwrap_or("").lines().next().unwrap_or("")
    )
}

/// `shoal verify`'s table: per job run again, whether it agrees with its maker's result.
pub fn print_verified(v: &crate::api::Verified) {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(["job", "verdict", "maker", "record", "rerun", "note"]);
    let short = |s: &str| s.trim_start_matches("blake3:").chars().take(12).collect::<String>();
    for j in &v.jobs {
        let verdict = match j.agrees {
            Some(true) => "agrees",
            Some(false) => "differs: maker quarantined",
            None => "not run",
        };
        let note = j.error.clone().unwrap_or_else(|| j.differs.join(", "));
        table.add_row([
            j.job.clone(),
            verdict.to_string(),
            short(&j.maker),
            short(&j.record.to_string()),
            j.rerun.map(|r| short(&r.to_string())).unwrap_or_default(),
            note,
        ]);
    }
    println!("{table}");
    if v.jobs.is_empty() {
        println!("no job to run again: none is done, or this node made every result (ask another node)");
    }
}

/// `shoal peers`.
pub fn peers(client: &Client, json: bool) -> Result<()> {
    let v: Peers = client.get_json("/v1/peers")?;
    if json {
        // As `Value`s: their keys sorted, as this command always printed them.
        println!("{}", serde_json::to_string_pretty(&serde_json::to_value(&v)?)?);
        return Ok(());
    }
    println!("{}", peers_table(&v));
    println!("clock: {}", v.clock.summary);
    if let Some(nat) = &v.nat {
        match nat.relays.as_slice() {
            [] => println!("reachability: {}", nat.reachability),
            relays => println!("reachability: {}, through relays {}", nat.reachability, relays.join(", ")),
        }
    }
    for q in &v.quarantined {
        let (node, by): (String, String) = (q.node.chars().take(12).collect(), q.by.chars().take(12).collect());
        println!("quarantined: {node} by {by}: {}", q.reason);
    }
    for r in &v.refused {
        let addr = r.addr.as_deref().unwrap_or("an unknown address");
        println!("refused: {} at {addr} ({}), {} s ago: {}", r.peer_id, r.agent, r.refused_ms_ago / 1000, r.reason);
    }
    Ok(())
}

fn peers_table(v: &Peers) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header([
        "node", "host", "version", "arch", "cores", "free", "running", "memory", "microvm", "facts", "seen", "via",
        "http",
    ]);
    for p in &v.peers {
        let node: String = p.node.chars().take(12).collect();
        let seen = if p.me {
            "(this node)".to_string()
        } else if p.connected {
            format!("{} ms ago", p.last_seen_ms_ago)
        } else {
            format!("{} ms ago, disconnected", p.last_seen_ms_ago)
        };
        let caps = p.caps.as_ref();
        // What `caps` lacks (no announcement with them yet) shows as JSON's null, as it did.
        let or_null = |s: Option<String>| s.unwrap_or_else(|| "null".into());
        table.add_row([
            node,
            p.hostname.clone(),
            p.version.clone(),
            caps.map(|c| {
                let name = |a| serde_json::to_value(a).ok().and_then(|v| v.as_str().map(str::to_string));
                // Emulated architectures after the native one: `x86_64 +aarch64`.
                std::iter::once(name(c.arch).unwrap_or_default())
                    .chain(c.emulated.iter().filter_map(|e| name(e.arch)).map(|n| format!("+{n}")))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default(),
            or_null(caps.map(|c| c.cores.to_string())),
            p.free_cores.to_string(),
            p.running.to_string(),
            crate::output::bytes(caps.map_or(0, |c| c.memory_bytes)),
            // Where it runs microVMs, how: kvm or tcg (true from a node that does not say).
            or_null(caps.map(|c| match (c.microvm, c.vm_accel) {
                (true, Some(a)) => a.as_str().to_string(),
                (m, _) => m.to_string(),
            })),
            p.facts.to_string(),
            seen,
            // The relay by the end of its peer id, which is where peer ids differ.
            match (p.via.as_deref(), &p.relay) {
                (Some("relay"), Some(relay)) => format!("relay …{}", &relay[relay.len().saturating_sub(8)..]),
                (Some(via), _) if p.hole_punched => format!("{via} (hole punched)"),
                (via, _) => via.unwrap_or_default().to_string(),
            },
            p.http.clone().unwrap_or_default(),
        ]);
    }
    table
}

/// `shoal get JOB OUTPUT --node URL [--dag HASH]`: the output from whichever peer holds it.
pub fn get_output(client: &Client, dag: Option<&str>, job: &str, output: &str, out: Option<&PathBuf>) -> Result<()> {
    let dag = match dag {
        Some(d) => d.to_string(),
        None => {
            // The one DAG in the ledger that has this job done.
            let list: DagList = client.get_json("/v1/dags")?;
            let mut found = Vec::new();
            for d in list.dags {
                let s: DagStatus = client.get_json(&format!("/v1/dags/{}", d.dag))?;
                if s.jobs.get(job).is_some_and(|j| j.state == JobStatus::Done) {
                    found.push(d.dag.to_string());
                }
            }
            match found.len() {
                0 => bail!("no DAG in the mesh's ledger has a job `{job}` done; `shoal status` lists them"),
                1 => found.remove(0),
                _ => bail!("several DAGs have a job `{job}` done ({}); choose one with --dag", found.join(", ")),
            }
        }
    };
    let resp = client.get_stream(&format!(
        "/v1/dags/{dag}/jobs/{}/outputs/{}",
        percent_encode(job),
        percent_encode(output)
    ))?;
    let is_tar = resp.headers().get("content-type").and_then(|v| v.to_str().ok()) == Some("application/x-tar");
    let mut reader = resp.into_body().into_with_config().limit(OUTPUT_BYTES_MAX).reader();
    match (is_tar, out) {
        (true, Some(dir)) => {
            std::fs::create_dir_all(dir)?;
            tar::Archive::new(reader).unpack(dir).with_context(|| format!("unpacking into {}", dir.display()))?;
        }
        (true, None) => {
            bail!("output `{output}` is a directory tree; give a new directory to write it to with `-o DIR`")
        }
        (false, Some(path)) => {
            let mut f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            std::io::copy(&mut reader, &mut f)?;
        }
        (false, None) => {
            let mut buf = Vec::new();
            reader.read_to_end(&mut buf)?;
            std::io::stdout().write_all(&buf)?;
        }
    }
    Ok(())
}

/// Before an embedded node (`shoal run --join`) leaves: every output it produced is fetched by
/// another node (through that node's API), so the results outlive it even if replication has not
/// caught up. Returns how many outputs were handed off; a peer whose API is out of reach is skipped.
pub fn hand_off(local: &Client, dag: &str) -> Result<usize> {
    let me = local.get_json::<Health>("/v1/health")?.node;
    let peers: Peers = local.get_json("/v1/peers")?;
    let others: Vec<Client> = peers
        .peers
        .into_iter()
        .filter(|p| !p.me && p.connected)
        .filter_map(|p| p.http.map(|h| Client::new(h, local.token())))
        .collect();
    if others.is_empty() {
        return Ok(0);
    }
    let status: DagStatus = local.get_json(&format!("/v1/dags/{dag}"))?;
    let mut handed = 0;
    for (job, j) in &status.jobs {
        if j.node.as_deref() != Some(me.as_str()) || j.state != JobStatus::Done {
            continue;
        }
        let Some(record) = j.record else { continue };
        let rec: shoal_dag::RunRecord = local.get_json(&format!("/v1/records/{record}"))?;
        let mut names: Vec<String> = rec.outputs.into_keys().collect();
        names.extend(["stdout".to_string(), "stderr".to_string()]);
        names.dedup();
        for name in names {
            let path = format!("/v1/dags/{dag}/jobs/{}/outputs/{}", percent_encode(job), percent_encode(&name));
            if others.iter().any(|c| c.get_stream(&path).and_then(|r| Ok(r.into_body().read_to_vec()?)).is_ok()) {
                handed += 1;
            }
        }
    }
    Ok(handed)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::Json;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    use shoal_dag::Hash;

    use super::*;
    use crate::api::{DagSummary, EventKind, JobView};
    use crate::api_error::{ApiError, not_found};

    /// Serves `router` with the daemon's own HTTP server on a loopback port, from a runtime of its
    /// own (the client is blocking); it stops when the test process ends.
    fn serve(router: axum::Router) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                crate::daemon::serve::serve(listener, router, Default::default()).await;
            });
        });
        format!("http://{addr}")
    }

    fn job(state: JobStatus, node: Option<&str>, record: Option<Hash>) -> JobView {
        JobView {
            state,
            node: node.map(str::to_string),
            record,
            failures: vec![],
            runs: vec![],
            nondeterministic: None,
            cached_from: None,
            reason: None,
        }
    }

    fn status(dag: Hash, jobs: Vec<(&str, JobView)>) -> DagStatus {
        DagStatus {
            dag,
            jobs: jobs.into_iter().map(|(id, j)| (id.to_string(), j)).collect(),
            known: true,
            node: "ab".into(),
            group: None,
            uploads: Vec::new(),
        }
    }

    #[test]
    fn a_file_input_that_is_no_regular_file_is_refused_before_anything_is_sent() {
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let seen = asked.clone();
        let url = serve(axum::Router::new().fallback(move || {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { StatusCode::NOT_FOUND }
        }));
        let dir = tempfile::tempdir().unwrap();
        let dag = dir.path().join("dag.json");
        for special in ["/dev/zero", "/dev/null"] {
            let text = format!(
                r#"{{"version": 1, "jobs": [{{"id": "a", "image": "busybox:latest", "command": ["cat"],
                    "stdin": "file:{special}", "outputs": {{"o": "stdout"}}}}]}}"#
            );
            std::fs::write(&dag, text).unwrap();
            let err = format!("{:#}", submit(&Client::new(url.clone(), None), &dag, None, false, true).unwrap_err());
            assert!(err.contains(&format!("`file:{special}` is not a regular file")), "{err}");
        }
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing reached the node");
    }

    #[test]
    fn the_node_is_the_one_given_or_the_one_holding_the_home() {
        let home = tempfile::tempdir().unwrap();
        assert_eq!(node_url(Some("http://n:7170/".into()), home.path()).unwrap(), "http://n:7170");
        let err = node_url(None, home.path()).unwrap_err().to_string();
        assert!(err.contains("start one with `shoal node`, or pass --node URL"), "{err}");
        // An empty `--node` (an unset variable in a script) is no node given.
        assert!(node_url(Some(String::new()), home.path()).is_err());
        let file = crate::api::NodeFile {
            blobs: vec![],
            http: "http://127.0.0.1:7171".into(),
            listen: vec![],
            node: "ab".into(),
            peer_id: "12D3".into(),
        };
        std::fs::write(home.path().join("node.json"), serde_json::to_string(&file).unwrap()).unwrap();
        assert_eq!(node_url(None, home.path()).unwrap(), "http://127.0.0.1:7171");
        std::fs::write(home.path().join("node.json"), "{\"http\": 3}").unwrap();
        let err = format!("{:#}", node_url(None, home.path()).unwrap_err());
        assert!(err.contains("node.json"), "{err}");
    }

    #[test]
    fn an_error_answer_is_shown_with_its_status_and_what_to_do() {
        let url = serve(
            axum::Router::new()
                .route("/v1/dags", get(|| async { Err::<Json<DagList>, _>(not_found("no DAG here; submit one")) }))
                .route(
                    "/v1/peers",
                    get(|| async {
                        Err::<Json<Peers>, _>(ApiError::new(StatusCode::UNAUTHORIZED, "a token is needed"))
                    }),
                )
                .route("/v1/health", get(|| async { "not json" })),
        );
        let anonymous = Client::new(url.clone(), None);
        let err = anonymous.get_json::<DagList>("/v1/dags").unwrap_err().to_string();
        assert_eq!(err, format!("{url}/v1/dags: HTTP 404 Not Found: no DAG here; submit one"));
        let err = anonymous.get_json::<Peers>("/v1/peers").unwrap_err().to_string();
        assert!(err.contains("HTTP 401") && err.contains("a token is needed") && err.contains("SHOAL_TOKEN"), "{err}");
        // With a token the node refused, the hint to give one would mislead.
        let err = Client::new(url.clone(), Some("s3cret".into())).get_json::<Peers>("/v1/peers").unwrap_err();
        assert!(!err.to_string().contains("SHOAL_TOKEN"), "{err}");
        // An answer that is not the route's body is an error, not a default.
        assert!(anonymous.get_json::<Health>("/v1/health").is_err());
    }

    #[test]
    fn a_node_that_does_not_answer_is_named() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let client = Client::new(format!("http://127.0.0.1:{port}"), None);
        let err = client.get_json::<Health>("/v1/health").unwrap_err().to_string();
        assert!(err.contains(&format!("cannot reach the node at http://127.0.0.1:{port}")), "{err}");
        assert!(err.contains("is `shoal node` running there?"), "{err}");
    }

    #[test]
    fn the_token_goes_as_a_bearer() {
        let url = serve(axum::Router::new().route(
            "/v1/health",
            get(|headers: HeaderMap| async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("none").to_string();
                Json(Health { node: auth, ok: true })
            }),
        ));
        let said = |token: Option<&str>| {
            Client::new(url.clone(), token.map(str::to_string)).get_json::<Health>("/v1/health").unwrap().node
        };
        assert_eq!(said(Some("s3cret")), "Bearer s3cret");
        assert_eq!(said(None), "none");
    }

    #[test]
    fn waiting_ends_when_every_job_has_ended_and_succeeds_only_if_all_are_done() {
        let (ok_dag, failed_dag) = (Hash::of(b"ok"), Hash::of(b"failed"));
        let done = status(ok_dag, vec![("a", job(JobStatus::Done, Some("ab"), Some(Hash::of(b"r"))))]);
        let failed = status(
            failed_dag,
            vec![
                ("a", job(JobStatus::Done, Some("ab"), Some(Hash::of(b"r")))),
                ("b", job(JobStatus::Unschedulable, None, None)),
            ],
        );
        let url = serve(axum::Router::new().route(
            "/v1/dags/{dag}",
            get(move |axum::extract::Path(dag): axum::extract::Path<String>| {
                let answer = if dag == ok_dag.to_string() { done.clone() } else { failed.clone() };
                async move { Json(answer) }
            }),
        ));
        let client = Client::new(url, None);
        assert!(wait_for(&client, &ok_dag.to_string(), true).unwrap());
        assert!(!wait_for(&client, &failed_dag.to_string(), true).unwrap());
    }

    #[test]
    fn get_finds_the_one_dag_with_the_job_done_and_writes_its_output() {
        let (a, b, c) = (Hash::of(b"a"), Hash::of(b"b"), Hash::of(b"c"));
        let record = Some(Hash::of(b"r"));
        let statuses = BTreeMap::from([
            (a.to_string(), status(a, vec![("build", job(JobStatus::Claimed, Some("ab"), None))])),
            (b.to_string(), status(b, vec![("build", job(JobStatus::Done, Some("ab"), record))])),
            (c.to_string(), status(c, vec![("test", job(JobStatus::Done, Some("ab"), record))])),
        ]);
        let list = DagList {
            dags: [a, b, c].into_iter().map(|dag| DagSummary { dag, jobs: 1, states: BTreeMap::new() }).collect(),
            node: "ab".into(),
        };
        let url = serve(
            axum::Router::new()
                .route("/v1/dags", get(move || async move { Json(list) }))
                .route(
                    "/v1/dags/{dag}",
                    get(move |axum::extract::Path(dag): axum::extract::Path<String>| {
                        let s = statuses.get(&dag).cloned();
                        async move { s.map(Json).ok_or_else(|| not_found("no such DAG")) }
                    }),
                )
                .route(
                    "/v1/dags/{dag}/jobs/{job}/outputs/{output}",
                    get(|axum::extract::Path((dag, job, output)): axum::extract::Path<(String, String, String)>| async move {
                        format!("{dag} {job} {output}")
                    }),
                ),
        );
        let client = Client::new(url, None);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        get_output(&client, None, "build", "bin", Some(&out)).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), format!("{b} build bin"));
        // Named, a DAG is not searched for.
        get_output(&client, Some(&a.to_string()), "build", "bin", Some(&out)).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), format!("{a} build bin"));
        let err = get_output(&client, None, "lint", "x", Some(&out)).unwrap_err().to_string();
        assert!(err.contains("no DAG in the mesh's ledger has a job `lint` done"), "{err}");
    }

    #[test]
    fn the_status_table_shows_why_a_job_did_not_run() {
        let record = Hash::of(b"r");
        let mut failed = job(JobStatus::Failed, None, None);
        failed.failures = vec!["first".into(), "exit 1\nmore".into()];
        let mut stuck = job(JobStatus::Unschedulable, None, None);
        stuck.reason = Some("no node has a GPU".into());
        stuck.failures = vec!["earlier".into()];
        let s = status(
            Hash::of(b"d"),
            vec![("a", job(JobStatus::Done, Some("0123456789abcdef"), Some(record))), ("b", failed), ("c", stuck)],
        );
        let text = status_table(&s).to_string();
        let row = |id: &str| text.lines().find(|l| l.contains(&format!(" {id} "))).unwrap().to_string();
        let hex = record.to_string().trim_start_matches("blake3:").chars().take(12).collect::<String>();
        assert!(row("a").contains("done") && row("a").contains("0123456789ab ") && row("a").contains(&hex));
        // The last failure's first line.
        assert!(row("b").contains("failed") && row("b").contains("exit 1") && !text.contains("more"));
        // The reason before the failures.
        assert!(row("c").contains("unschedulable") && row("c").contains("no node has a GPU"));
        assert!(!text.contains("earlier"));
        assert_eq!(progress(&s), (3, 0));
        let running = status(Hash::of(b"d"), vec![("a", job(JobStatus::Claimed, None, None))]);
        assert_eq!(progress(&running), (0, 1));
    }

    #[test]
    fn an_event_is_one_line() {
        let ev = Event {
            kind: EventKind::Failed,
            dag: Hash::of(b"d"),
            job: Some("build".into()),
            node: "0123456789abcdef".into(),
            detail: Some("exit 1\nstderr...".into()),
            at_unix_ms: 0,
        };
        assert_eq!(event_line(&ev), "failed     build                on 0123456789ab  exit 1");
        let ev = Event { kind: EventKind::Cancelled, job: None, detail: None, ..ev };
        assert_eq!(event_line(&ev), "cancelled  -                    on 0123456789ab  ");
    }
}
