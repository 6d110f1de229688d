//! The HTTP API under load (issue 16, "Proving it: Load"): one real `shoal node` on 127.0.0.1 and
//! many concurrent clients on keep-alive connections doing a mix of reads, blob downloads and small
//! DAG submits. The CI-sized test runs 1,000 clients for 10 s; `SHOAL_LOAD_SECONDS=60` (and
//! `SHOAL_LOAD_CLIENTS`) make it the minute-long bench whose figures docs/SECURITY.md quotes.
//!
//! The load generator is a small HTTP/1.1 client on tokio (one connection per client, requests in
//! sequence, `Content-Length` and chunked bodies): no client library between the test and what the
//! node does on the wire.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::mesh::{MeshNode, mesh_key};
use crate::support::*;

/// Longest one request may go unanswered before it counts as a hang (a deadline against a
/// broken node, not a latency bound).
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);
/// Resident memory the node may reach under the CI-sized load, in bytes: its idle debug build
/// takes about 60 MB; a connection costs it tens of KB.
const LOAD_RSS_BYTES_MAX: u64 = 512 << 20;
/// Open files the node may keep beyond its idle count once the clients are gone.
const LOAD_FDS_LEFT_MAX: usize = 16;

#[derive(Default)]
struct ClientReport {
    /// Answers by status code.
    statuses: BTreeMap<u16, u64>,
    /// Failures that are not an HTTP status, by kind.
    errors: BTreeMap<String, u64>,
    /// Latency of each answered request, in µs.
    latencies_us: Vec<u32>,
}

/// What a client asks for, in turn (weights out of 20).
#[derive(Clone)]
struct Mix {
    host: String,
    blob: String,
    dags: Arc<Vec<String>>,
}

impl Mix {
    fn request(&self, client: usize, n: usize) -> Vec<u8> {
        let host = &self.host;
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
        match (client + n) % 20 {
            0..=7 => get("/v1/health"),
            8..=10 => get("/v1/dags"),
            11..=13 => get("/v1/peers"),
            14..=18 => get(&format!("/v1/blobs/{}", self.blob)),
            _ => {
                let body = &self.dags[(client + n) % self.dags.len()];
                let mut req = format!(
                    "POST /v1/dags HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                req.extend_from_slice(body.as_bytes());
                req
            }
        }
    }
}

/// Reads one response; returns its status and whether the server keeps the connection.
async fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<(u16, bool)> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before a response"));
    }
    let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (mut length, mut chunked, mut keep) = (0usize, false, true);
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed in the headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':').unwrap_or((l, ""));
        let (name, value) = (name.to_ascii_lowercase(), value.trim().to_ascii_lowercase());
        match name.as_str() {
            "content-length" => length = value.parse().unwrap_or(0),
            "transfer-encoding" => chunked = value.contains("chunked"),
            "connection" => keep = value != "close",
            _ => {}
        }
    }
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            let mut skip = vec![0u8; size + 2];
            r.read_exact(&mut skip).await?;
            if size == 0 {
                break;
            }
        }
    } else {
        let mut body = vec![0u8; length];
        r.read_exact(&mut body).await?;
    }
    Ok((status, keep))
}

async fn client(addr: String, mix: Mix, id: usize, stop: Arc<AtomicBool>) -> ClientReport {
    let mut report = ClientReport::default();
    let mut n = 0usize;
    'connections: while !stop.load(Ordering::Relaxed) {
        let stream = match tokio::time::timeout(REQUEST_DEADLINE, TcpStream::connect(&addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                *report.errors.entry(format!("connect: {:?}", e.kind())).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => {
                *report.errors.entry("connect: no answer in 60 s".into()).or_default() += 1;
                continue;
            }
        };
        let mut r = BufReader::new(stream);
        while !stop.load(Ordering::Relaxed) {
            let req = mix.request(id, n);
            n += 1;
            let started = Instant::now();
            let answer = tokio::time::timeout(REQUEST_DEADLINE, async {
                r.get_mut().write_all(&req).await?;
                read_response(&mut r).await
            })
            .await;
            match answer {
                Ok(Ok((status, keep))) => {
                    report.latencies_us.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    *report.statuses.entry(status).or_default() += 1;
                    if status == 503 || status == 429 {
                        // Told to come back: as a polite client would, after a pause.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    if !keep {
                        continue 'connections;
                    }
                }
                Ok(Err(e)) => {
                    *report.errors.entry(format!("io: {:?}", e.kind())).or_default() += 1;
                    continue 'connections;
                }
                Err(_) => {
                    *report.errors.entry("no answer in 60 s".into()).or_default() += 1;
                    continue 'connections;
                }
            }
        }
    }
    report
}

/// Resident memory (bytes) and open files of a process.
fn rss_and_fds(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((kb * 1024, fds))
}

/// What a load run measured that its test checks (the rest is printed).
struct LoadFigures {
    requests: u64,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    rss_peak: u64,
    fds_start: usize,
    fds_end: usize,
    clients_answered: usize,
}

/// Runs `clients` clients against `node` for `seconds`, sampling the node's memory and files, and
/// prints the figures.
fn run_load(node: &MeshNode, clients: usize, seconds: u64, mix: Mix) -> LoadFigures {
    let pid = node.pid().expect("the node runs");
    let (rss_start, fds_start) = rss_and_fds(pid).expect("/proc of the node");
    let addr = node.http.trim_start_matches("http://").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let (mut rss_peak, mut fds_peak) = (0, 0);
            while sampling.load(Ordering::Relaxed) {
                if let Some((rss, fds)) = rss_and_fds(pid) {
                    rss_peak = rss_peak.max(rss);
                    fds_peak = fds_peak.max(fds);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (rss_peak, fds_peak)
        })
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let started = Instant::now();
    let reports: Vec<ClientReport> = rt.block_on(async {
        let tasks: Vec<_> =
            (0..clients).map(|i| tokio::spawn(client(addr.clone(), mix.clone(), i, stop.clone()))).collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let elapsed = started.elapsed().as_secs_f64();
    drop(rt);
    // The clients are gone: the node's files go back to their idle count (waited for, with a deadline).
    let settle = Instant::now();
    let (mut rss_end, mut fds_end) = rss_and_fds(pid).unwrap();
    while fds_end > fds_start + LOAD_FDS_LEFT_MAX && settle.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        (rss_end, fds_end) = rss_and_fds(pid).unwrap();
    }
    sampling.store(false, Ordering::Relaxed);
    let (rss_peak, fds_peak) = sampler.join().unwrap();

    let mut statuses = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let mut latencies: Vec<u32> = Vec::new();
    let mut clients_answered = 0;
    for r in reports {
        clients_answered += usize::from(!r.latencies_us.is_empty());
        for (k, v) in r.statuses {
            *statuses.entry(k).or_default() += v;
        }
        for (k, v) in r.errors {
            *errors.entry(k).or_default() += v;
        }
        latencies.extend(r.latencies_us);
    }
    latencies.sort_unstable();
    let requests = latencies.len() as u64;
    let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)));
    let ms = |us: Option<&u32>| us.map_or(0.0, |us| *us as f64 / 1000.0);
    eprintln!(
        "load: {clients} clients, {elapsed:.1} s: {requests} answers ({:.0}/s), latency p50 {:.1} ms, p99 {:.1} ms, \
         max {:.1} ms; statuses {statuses:?}; errors {errors:?}; {clients_answered} clients answered; node RSS \
         {} / {} / {} MiB (start/peak/end), fds {fds_start} / {fds_peak} / {fds_end}",
        requests as f64 / elapsed,
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(latencies.last()),
        rss_start >> 20,
        rss_peak.max(rss_end) >> 20,
        rss_end >> 20
    );
    LoadFigures { requests, statuses, errors, rss_peak: rss_peak.max(rss_end), fds_start, fds_end, clients_answered }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A node and what the clients ask of it: a 64 KiB blob and 20 small DAGs (submitted again and
/// again: after their first run every job is an action-cache hit).
fn loaded_node(extra: &[&str]) -> (MeshNode, Mix) {
    let home = Home::with_busybox();
    let key = mesh_key(home.path());
    let node = MeshNode::start(home, &key, &[], extra);
    let blob: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8).collect();
    let agent = ureq::Agent::new_with_defaults();
    let mut resp = agent
        .post(format!("{}/v1/blobs", node.http))
        .header("content-type", "application/octet-stream")
        .send(&blob[..])
        .expect("upload");
    let up: serde_json::Value = serde_json::from_slice(&resp.body_mut().read_to_vec().unwrap()).unwrap();
    let dags = (0..20)
        .map(|i| {
            serde_json::json!({"version": 1, "jobs": [{"id": "hello", "image": "busybox:latest",
                "command": ["echo", format!("load {i}")], "outputs": {"o": "stdout"}}]})
            .to_string()
        })
        .collect();
    let host = node.http.trim_start_matches("http://").to_string();
    (node, Mix { host, blob: up["hash"].as_str().unwrap().to_string(), dags: Arc::new(dags) })
}

/// 1,000 clients for 10 s (CI; `SHOAL_LOAD_SECONDS`, `SHOAL_LOAD_CLIENTS` for longer runs): every
/// request answered with a success or the documented 429/503, every client served, memory
/// bounded, every connection's file given back.
#[test]
fn the_api_answers_a_thousand_clients_with_bounded_memory() {
    let (node, mix) = loaded_node(&[]);
    let clients = env_or("SHOAL_LOAD_CLIENTS", 1000) as usize;
    let f = run_load(&node, clients, env_or("SHOAL_LOAD_SECONDS", 10), mix);
    assert!(f.requests > 0);
    assert!(f.errors.is_empty(), "failures that are not an HTTP answer: {:?}", f.errors);
    let bad: BTreeMap<_, _> =
        f.statuses.iter().filter(|(s, _)| !(200..300).contains(*s) && ![429, 503].contains(*s)).collect();
    assert!(bad.is_empty(), "answers other than success, 429 and 503: {bad:?}");
    assert_eq!(f.clients_answered, clients, "some clients were never answered");
    assert!(f.rss_peak < LOAD_RSS_BYTES_MAX, "the node reached {} MiB under load", f.rss_peak >> 20);
    assert!(
        f.fds_end <= f.fds_start + LOAD_FDS_LEFT_MAX,
        "the node kept {} files open after the clients left ({} before)",
        f.fds_end,
        f.fds_start
    );
    // Still whole: it answers and runs a job.
    assert_eq!(node.get("/v1/health").0, 200);
}

/// 1,500 connections that sent half a request held every file of a node (1,024 by default) and it
/// answered nobody, its store starved of files too. Connections past `--http-connections-max` are
/// answered 503 and closed; a connection slower than `--http-header-timeout-ms` to send its
/// headers (or idle that long) is closed, and its place goes to the next client.
#[test]
fn slow_and_surplus_connections_do_not_starve_the_api() {
    use std::io::{Read, Write};
    let (node, _) = loaded_node(&["--http-connections-max", "50", "--http-header-timeout-ms", "1000"]);
    let addr = node.http.trim_start_matches("http://").to_string();
    let host = addr.clone();
    let mut slow: Vec<std::net::TcpStream> = (0..60)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(format!("GET /v1/health HTTP/1.1\r\nHost: {host}\r\nX-Half: ").as_bytes()).unwrap();
            s.set_read_timeout(Some(COMMAND_TIMEOUT)).unwrap();
            s
        })
        .collect();
    let ask = || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(COMMAND_TIMEOUT)).unwrap();
        s.write_all(format!("GET /v1/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
            .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    };
    // Every slow connection is closed by the node (a read ends), none answered.
    for s in &mut slow {
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).expect("the node closes a connection slower than its header timeout");
        let text = String::from_utf8_lossy(&buf);
        assert!(buf.is_empty() || text.starts_with("HTTP/1.1 503"), "a half request was answered: {text}");
    }
    // With them gone, a client is served.
    let answer = ask();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // 50 idle keep-alive connections fill the node: the 51st client is told to come back.
    let _idle: Vec<std::net::TcpStream> = (0..50)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(format!("GET /v1/health HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).unwrap();
            let mut buf = [0u8; 12];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"HTTP/1.1 200");
            s
        })
        .collect();
    let answer = ask();
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("Retry-After: 1"), "{answer}");
    assert!(answer.contains("--http-connections-max"), "{answer}");
}
