//! `shoal explore`: opens the Program Explorer of the node running with this store, starting one
//! (in the background, where it keeps running) when none answers.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Longest a started node may take to answer, in ms.
const NODE_START_MS: u64 = 60_000;
/// How long a health check may take, in ms.
const HEALTH_TIMEOUT_MS: u64 = 2_000;
/// Lines of the node's log shown when it does not start.
const LOG_TAIL_LINES: usize = 30;

#[derive(clap::Args, Debug)]
pub struct ExploreArgs {
    /// HTTP address for the node started when none runs with this store (taken: any free port).
    #[arg(long, default_value = "127.0.0.1:7170")]
    http: SocketAddr,
    /// Where the started node runs jobs.
    #[arg(long, default_value = "microvm", value_parser = ["microvm", "namespace"])]
    backend: String,
    /// Print the URL only; do not open a browser.
    #[arg(long)]
    no_open: bool,
}

pub fn explore(home: &Path, args: ExploreArgs) -> Result<ExitCode> {
    let url = match running_node(home) {
        Some(url) => url,
        None => start_node(home, &args)?,
    };
    println!("{url}/");
    if !args.no_open {
        open_browser(&format!("{url}/"));
    }
    Ok(ExitCode::SUCCESS)
}

/// The URL of the node whose `node.json` is in `home`, if it answers as the node that file names
/// (a stale file of a killed node may name a port another node has taken since).
pub fn running_node(home: &Path) -> Option<String> {
    let text = std::fs::read_to_string(home.join("node.json")).ok()?;
    let file: crate::api::NodeFile = serde_json::from_str(&text).ok()?;
    (healthy(&file.http).as_deref() == Some(file.node.as_str())).then(|| file.http.trim_end_matches('/').to_string())
}

/// The node id a node's `/v1/health` answers with, if it answers.
fn healthy(url: &str) -> Option<String> {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_millis(HEALTH_TIMEOUT_MS)))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let mut resp = agent.get(format!("{url}/v1/health")).call().ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let health: crate::api::Health = resp.body_mut().with_config().limit(1 << 16).read_json().ok()?;
    Some(health.node)
}

fn start_node(home: &Path, args: &ExploreArgs) -> Result<String> {
    std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
    let key = home.join("mesh.key");
    if !key.exists() {
        crate::daemon::write_mesh_key(&key)?;
    }
    // The default port may belong to a node of another store.
    let http =
        if std::net::TcpListener::bind(args.http).is_ok() { args.http } else { SocketAddr::new(args.http.ip(), 0) };
    let log_path = home.join("explore-node.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let _ = std::fs::remove_file(home.join("node.json"));
    let exe = std::env::current_exe().context("cannot find the shoal executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["node", "--http", &http.to_string(), "--listen", "/ip4/127.0.0.1/tcp/0", "--blobs", "127.0.0.1:0"])
        .args(["--backend", &args.backend])
        .env("SHOAL_HOME", home)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own process group: the node outlives this command and a ctrl-c at this terminal.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("starting `shoal node`")?;
    let started = Instant::now();
    loop {
        if let Some(url) = running_node(home) {
            eprintln!(
                "started a node (pid {}, {} backend, log {}); it keeps running: stop it with `kill {}`",
                child.id(),
                args.backend,
                log_path.display(),
                child.id()
            );
            return Ok(url);
        }
        if let Some(status) = child.try_wait()? {
            bail!("`shoal node` exited ({status}) before it answered:\n{}", log_tail(&log_path));
        }
        if started.elapsed() > Duration::from_millis(NODE_START_MS) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`shoal node` did not answer within {NODE_START_MS} ms:\n{}", log_tail(&log_path));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Opens the URL in the desktop's browser when there is a desktop; otherwise the URL printed
/// is the way in.
fn open_browser(url: &str) {
    let desktop = std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !desktop {
        return;
    }
    let spawned =
        Command::new("xdg-open").arg(url).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
    if spawned.is_err() {
        eprintln!("open {url} in a browser (xdg-open is not installed)");
    }
}
