//! Data where users keep it (issue 22): URL and `s3://` inputs the node fetches, outputs it
//! uploads to presigned URLs and buckets, `fd:N` outputs, and the seed's own spellings.
//!
//! The S3 server is a real one, `s3s-fs` (scripts/setup.sh installs it), started with access
//! keys: it checks every SigV4 signature and every presigned URL's expiry, so a wrong key or an
//! expired URL is refused by the server, not by our code. The web server is a small one of the
//! test's own, to serve what real servers do at their worst: a 404, a stall, a body past the
//! limit, bytes that change behind a pinned URL, a 503 before it answers.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const ACCESS_KEY: &str = "shoaltestkey";
const SECRET_KEY: &str = "shoaltestsecret0123456789";

/// `s3s-fs` on a port of its own, its buckets directories under `root`.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub root: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn s3s_fs() -> Option<PathBuf> {
    let home = std::env::var("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo")
    });
    let candidates = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("s3s-fs"))
        .chain([home.join("bin/s3s-fs")])
        .collect::<Vec<_>>();
    candidates.into_iter().find(|p| p.is_file())
}

impl S3Server {
    /// Started and answering; None (a skip) where s3s-fs is missing outside CI.
    pub fn start() -> Option<S3Server> {
        let Some(bin) = s3s_fs() else {
            let msg = "s3s-fs is missing: scripts/setup.sh installs it (cargo install s3s-fs)";
            assert!(std::env::var("CI").is_err(), "{msg}");
            eprintln!("skipping: {msg}");
            return None;
        };
        let root = tempfile::Builder::new().prefix("shoal-it-s3-").tempdir().unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(S3Server { child, endpoint: format!("http://127.0.0.1:{port}"), root })
    }

    pub fn bucket(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The AWS environment of a user whose credentials this server accepts.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

/// What the test web server answers on a path.
#[derive(Clone)]
pub enum Route {
    Bytes(Vec<u8>),
    /// Headers promising this many bytes, then silence.
    Stall(u64),
    /// This status this many times, then the bytes.
    FailThen(u16, u32, Vec<u8>),
}

#[derive(Default)]
pub struct WebState {
    pub routes: BTreeMap<String, Route>,
    /// GETs and PUTs by path.
    pub hits: BTreeMap<String, u32>,
}

/// A small HTTP/1.1 server on loopback: GET answers from the routes, PUT stores the body as the
/// path's bytes.
pub struct Web {
    pub base: String,
    pub state: Arc<Mutex<WebState>>,
}

impl Web {
    pub fn start() -> Web {
        Web::on("127.0.0.1:0")
    }

    pub fn on(addr: &str) -> Web {
        let listener = TcpListener::bind(addr).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(WebState::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        Web { base, state }
    }

    pub fn route(&self, path: &str, r: Route) {
        self.state.lock().unwrap().routes.insert(path.into(), r);
    }

    pub fn hits(&self, path: &str) -> u32 {
        self.state.lock().unwrap().hits.get(path).copied().unwrap_or(0)
    }

}

fn serve(mut conn: TcpStream, st: &Mutex<WebState>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let path = target.split('?').next().unwrap_or("").to_string();
    let mut length = 0u64;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let route = {
        let mut st = st.lock().unwrap();
        *st.hits.entry(path.clone()).or_default() += 1;
        if method == "PUT" {
            let mut body = vec![0; length as usize];
            reader.read_exact(&mut body)?;
            let etag = format!("\"{}\"", blake3::hash(&body).to_hex());
            st.routes.insert(path.clone(), Route::Bytes(body));
            drop(st);
            return write!(conn, "HTTP/1.1 200 OK\r\nETag: {etag}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
        let route = st.routes.get(&path).cloned();
        if let Some(Route::FailThen(code, n, bytes)) = &route {
            let left = n.saturating_sub(1);
            let next = if left == 0 { Route::Bytes(bytes.clone()) } else { Route::FailThen(*code, left, bytes.clone()) };
            st.routes.insert(path.clone(), next);
        }
        route
    };
    match route {
        None => write!(conn, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        Some(Route::FailThen(code, _, _)) => {
            write!(conn, "HTTP/1.1 {code} Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        }
        Some(Route::Bytes(b)) => {
            write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b.len())?;
            conn.write_all(&b)
        }
        Some(Route::Stall(n)) => {
            write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n")?;
            conn.write_all(b"a few bytes, then nothing")?;
            std::thread::sleep(Duration::from_secs(30));
            Ok(())
        }
    }
}

/// `shoal ARGS` on `home` with `env`.
pub fn shoal_env(home: &Home, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(shoal_bin());
    cmd.args(args).env("SHOAL_HOME", home.store()).env_remove("RUST_LOG").current_dir(home.path());
    for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"] {
        cmd.env_remove(k);
    }
    // No credentials file of the machine's own.
    cmd.env("AWS_SHARED_CREDENTIALS_FILE", home.path().join("no-aws-credentials"));
    cmd.env("AWS_CONFIG_FILE", home.path().join("no-aws-config"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_deadline(cmd)
}

fn presign(home: &Home, s3: &S3Server, object: &str, extra: &[&str]) -> String {
    let mut args = vec!["s3", "presign", object];
    args.extend_from_slice(extra);
    let out = shoal_env(home, &args, &s3.env());
    assert_success(&out, "shoal s3 presign");
    stdout(&out).trim().to_string()
}

fn dag(home: &Home, name: &str, jobs: Value) -> PathBuf {
    home.write(name, &serde_json::to_string_pretty(&serde_json::json!({"version": 1, "jobs": jobs})).unwrap())
}

fn run_json(home: &Home, dag: &Path, extra: &[&str], env: &[(&str, String)]) -> (Output, Value) {
    let mut args = vec!["run", "--backend", "namespace", "--json", dag.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = shoal_env(home, &args, env);
    let v = serde_json::from_str(&stdout(&out)).unwrap_or(Value::Null);
    (out, v)
}

fn job<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["jobs"].as_array().unwrap().iter().find(|j| j["job"] == id).unwrap_or_else(|| panic!("no job {id}: {report}"))
}

fn get_output(home: &Home, job: &str, output: &str) -> Vec<u8> {
    let out = home.shoal(&["get", job, output]);
    assert_success(&out, "shoal get");
    out.stdout
}

/// 1 MiB and a bit of bytes no two tests share.
fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[i % 4] ^ seed).collect()
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn an_output_goes_to_a_bucket_in_parts_and_a_second_dag_reads_it_back_by_a_presigned_url() {
    let Some(s3) = S3Server::start() else { return };
    let bucket = s3.bucket("results");
    let home = Home::with_busybox();
    let web = Web::start();
    let input = data(7, (1 << 20) + 4321);
    assert_eq!((15 * input.len() + 500_000).div_ceil(5 << 20), 4);
    web.route("/in.bin", Route::Bytes(input.clone()));
    // 15 MiB and a half of output: four parts of 5 MiB (S3's smallest) with the threshold lowered.
    let first = dag(
        &home,
        "first.json",
        serde_json::json!([{
            "id": "make", "image": "busybox:latest",
            "command": ["sh", "-c", "for i in $(seq 15); do cat /input/in; done; head -c 500000 /input/in"],
            "inputs": {"in": format!("{}/in.bin", web.base)},
            "outputs": {"out": "stdout"},
            "upload": {"out": "s3://results/big/out.bin"}
        }]),
    );
    let parts = ["--s3-multipart-above", "6MiB", "--s3-part-size", "5MiB"];
    let (out, report) = run_json(&home, &first, &parts, &s3.env());
    assert_success(&out, "the first DAG");
    let up = &job(&report, "make")["uploads"][0];
    assert_eq!(up["state"], "done", "{report}");
    assert_eq!(up["parts"], 4, "{up}");
    assert_eq!(up["destination"], "s3://results/big/out.bin");
    let want: Vec<u8> = [input.repeat(15), input[..500_000].to_vec()].concat();
    assert_eq!(up["bytes"], want.len() as u64);
    assert_eq!(std::fs::read(bucket.join("big/out.bin")).unwrap(), want, "the object is the output");
    assert_eq!(web.hits("/in.bin"), 1);

    // Read back by a presigned GET, pinned by the sha256 the bucket holds.
    let url = presign(&home, &s3, "s3://results/big/out.bin", &[]);
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let second = dag(
        &home,
        "second.json",
        serde_json::json!([{
            "id": "count", "image": "busybox:latest",
            "command": ["sh", "-c", "wc -c < /input/back"],
            "inputs": {"back": format!("{url}#sha256={}", sha256_hex(&want))},
            "outputs": {"n": "stdout"},
            "upload": {"n": "s3://results/count.txt"}
        }]),
    );
    let (out, report) = run_json(&home, &second, &[], &s3.env());
    assert_success(&out, "the second DAG");
    assert_eq!(String::from_utf8(get_output(&home, "count", "n")).unwrap().trim(), want.len().to_string());
    assert_eq!(job(&report, "count")["uploads"][0]["parts"], Value::Null, "a small object is one PUT");
    assert_eq!(std::fs::read_to_string(bucket.join("count.txt")).unwrap().trim(), want.len().to_string());

    // Nothing shows the presigned URL's signature: not the record, the run's output or the
    // upload records.
    let record = home.shoal(&["show", "count"]);
    assert_success(&record, "shoal show");
    let secret = url.split("X-Amz-Signature=").nth(1).unwrap().split('&').next().unwrap();
    for (what, text) in [
        ("the record", stdout(&record)),
        ("the run", format!("{}{}", stdout(&out), stderr(&out))),
        ("the uploads", stdout(&home.shoal(&["upload", "ls", "--json"]))),
    ] {
        assert!(!text.contains(secret), "{what} shows the signature: {text}");
    }
    // Run again: a cache hit uploads again (the destination is no part of the action key).
    std::fs::remove_file(bucket.join("count.txt")).unwrap();
    let (out, report) = run_json(&home, &second, &[], &s3.env());
    assert_success(&out, "the second DAG again");
    assert_eq!(job(&report, "count")["cached"], true);
    assert_eq!(job(&report, "count")["uploads"][0]["state"], "done");
    assert!(bucket.join("count.txt").exists(), "uploaded again on a cache hit");
}

#[test]
fn a_presigned_put_that_expired_a_wrong_key_and_a_missing_bucket_fail_with_why_and_keep_the_output() {
    let Some(s3) = S3Server::start() else { return };
    let bucket = s3.bucket("results");
    let home = Home::with_busybox();
    let expired = presign(&home, &s3, "s3://results/late.txt", &["--put", "--expires", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let d = dag(
        &home,
        "up.json",
        serde_json::json!([
            {"id": "late", "image": "busybox:latest", "command": ["echo", "late"],
             "outputs": {"o": "stdout"}, "upload": {"o": expired}},
            {"id": "keyed", "image": "busybox:latest", "command": ["echo", "lost?"],
             "outputs": {"o": "stdout"}, "upload": {"o": "s3://results/x.txt"}},
            {"id": "after", "image": "busybox:latest", "command": ["cat", "/input/x"],
             "inputs": {"x": "jobs:late/o"}, "outputs": {"o": "stdout"}}
        ]),
    );
    // A wrong secret key: the server refuses the signature.
    let mut wrong = s3.env();
    wrong.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    wrong.push(("AWS_SECRET_ACCESS_KEY", "not-the-secret".into()));
    let (out, report) = run_json(&home, &d, &["--transfer-attempts", "1"], &wrong);
    assert!(!out.status.success(), "a failed upload fails the run");
    // Every job is done: the outputs are stored, their dependants ran.
    for j in ["late", "keyed", "after"] {
        assert_eq!(job(&report, j)["status"], "done", "{report}");
    }
    let late = &job(&report, "late")["uploads"][0];
    assert_eq!(late["state"], "failed");
    let why = late["error"].as_str().unwrap();
    assert!(why.contains("the presigned URL expired at 20"), "{why}");
    assert!(why.contains("shoal s3 presign"), "{why}");
    let signature = expired.split("X-Amz-Signature=").nth(1).unwrap();
    assert!(!late["destination"].as_str().unwrap().contains(signature), "{late}");
    let keyed = &job(&report, "keyed")["uploads"][0];
    assert!(keyed["error"].as_str().unwrap().contains("SignatureDoesNotMatch"), "{keyed}");
    assert_eq!(keyed["http_status"], Value::Null);
    assert_eq!(get_output(&home, "after", "o"), b"late\n");
    assert!(!bucket.join("x.txt").exists());

    // The right key: the retry sends it; the expired one fails again, with why.
    let out = shoal_env(&home, &["upload", "retry", "keyed", "--json"], &s3.env());
    assert_success(&out, "shoal upload retry");
    assert_eq!(json(&out)[0]["state"], "done");
    assert_eq!(std::fs::read(bucket.join("x.txt")).unwrap(), b"lost?\n");
    let out = shoal_env(&home, &["upload", "retry", "--transfer-attempts", "1"], &s3.env());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("1 upload(s) failed again"), "{}", stderr(&out));
    let ls = stdout(&home.shoal(&["upload", "ls"]));
    assert!(ls.contains("keyed/o → s3://results/x.txt: done"), "{ls}");
    assert!(ls.contains("late/o → ") && ls.contains("FAILED"), "{ls}");
    assert!(!ls.contains(signature), "{ls}");

    // Reading: an object in a bucket that does not exist, and a presigned GET that expired.
    s3.bucket("data");
    std::fs::write(s3.root.path().join("data/x.txt"), "x\n").unwrap();
    let get = presign(&home, &s3, "s3://data/x.txt", &["--expires", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let reader = |id: &str, from: &str| {
        serde_json::json!({"id": id, "image": "busybox:latest", "command": ["cat", "/input/x"],
            "inputs": {"x": from}, "outputs": {"o": "stdout"}})
    };
    let d = dag(
        &home,
        "get.json",
        serde_json::json!([
            reader("expired", &get),
            reader("nobucket", "s3://no-such-bucket/x.txt"),
            reader("fine", "s3://data/x.txt")
        ]),
    );
    let (out, report) = run_json(&home, &d, &["--transfer-attempts", "1"], &s3.env());
    assert!(!out.status.success());
    let err = |j: &str| job(&report, j)["error"].as_str().unwrap_or("").to_string();
    assert!(err("expired").contains("expired at"), "{}", err("expired"));
    assert!(!err("expired").contains(get.split("X-Amz-Signature=").nth(1).unwrap()), "{}", err("expired"));
    assert!(err("nobucket").contains("s3://no-such-bucket/x.txt: not found (HTTP 404)"), "{}", err("nobucket"));
    assert_eq!(get_output(&home, "fine", "o"), b"x\n");
}

#[test]
fn url_inputs_fail_with_what_happened_a_404_a_stall_a_body_too_large_and_changed_bytes() {
    let home = Home::with_busybox();
    let web = Web::start();
    let old = b"version 1\n".to_vec();
    web.route("/pinned", Route::Bytes(old.clone()));
    web.route("/stall", Route::Stall(1 << 20));
    web.route("/big", Route::Bytes(data(3, 2 << 20)));
    web.route("/flaky", Route::FailThen(503, 2, b"there after all\n".to_vec()));
    let reader = |id: &str, url: String| {
        serde_json::json!({"id": id, "image": "busybox:latest", "command": ["cat", "/input/x"],
            "inputs": {"x": url}, "outputs": {"o": "stdout"}})
    };
    let d = dag(
        &home,
        "in.json",
        serde_json::json!([
            reader("missing", format!("{}/nope", web.base)),
            reader("stalled", format!("{}/stall", web.base)),
            reader("big", format!("{}/big", web.base)),
            reader("pinned", format!("{}/pinned#sha256={}", web.base, sha256_hex(&old))),
            reader("flaky", format!("{}/flaky", web.base)),
        ]),
    );
    let flags = ["--transfer-timeout", "1s", "--fetch-size-max", "1MiB", "--transfer-attempts", "3"];
    let (out, report) = run_json(&home, &d, &flags, &[]);
    assert!(!out.status.success());
    let err = |j: &str| job(&report, j)["error"].as_str().unwrap_or("").to_string();
    assert!(err("missing").contains("not found (HTTP 404)"), "{}", err("missing"));
    assert_eq!(web.hits("/nope"), 1, "a 404 is not tried again");
    assert!(err("stalled").contains("gave up after 3 attempts"), "{}", err("stalled"));
    assert!(err("stalled").to_lowercase().contains("timeout") || err("stalled").contains("timed out"), "{}", err("stalled"));
    assert!(err("big").contains("larger than this node fetches, 1048576 bytes"), "{}", err("big"));
    assert!(err("big").contains("--fetch-size-max"), "{}", err("big"));
    assert_eq!(job(&report, "pinned")["status"], "done");
    assert_eq!(job(&report, "flaky")["status"], "done", "{report}");
    assert_eq!(web.hits("/flaky"), 3, "two 503s, then the bytes");
    assert_eq!(get_output(&home, "flaky", "o"), b"there after all\n");

    // The server changes the bytes behind the pinned URL: both hashes are named.
    web.route("/pinned", Route::Bytes(b"version 2\n".to_vec()));
    // Where the first run stored the pinned bytes, they are taken from the store, not fetched.
    let (_, report) = run_json(&home, &d, &flags, &[]);
    assert_eq!(job(&report, "pinned")["status"], "done", "{report}");
    let fresh = Home::with_busybox();
    let (_, report) = run_json(&fresh, &d, &flags, &[]);
    let e = job(&report, "pinned")["error"].as_str().unwrap().to_string();
    assert!(e.contains(&format!("the DAG pins sha256:{}", sha256_hex(&old))), "{e}");
    assert!(e.contains(&format!("hash to sha256:{}", sha256_hex(b"version 2\n"))), "{e}");
}

#[test]
fn fd_outputs_hold_what_the_job_writes_there_empty_a_mebibyte_or_too_much_and_fd0_is_stdout_with_a_warning() {
    let home = Home::with_busybox();
    let d = dag(
        &home,
        "fd.json",
        serde_json::json!([
            {"id": "fds", "image": "busybox:latest",
             "command": ["sh", "-c", "echo out; head -c 1048576 /dev/zero | tr '\\0' x >&3; echo err >&2"],
             "outputs": {"mib": "fd:3", "empty": "fd:4", "zero": "fd:0", "two": "fd:2"}},
            {"id": "over", "image": "busybox:latest",
             "command": ["sh", "-c", "head -c 3145728 /dev/zero >&5"],
             "outputs": {"big": "fd:5"}, "requirements": {"output_size": "1MiB"}},
            {"id": "seeded", "image": "busybox:latest", "net": false,
             "command": ["sh", "-c", "cat /input/mib | wc -c"],
             "inputs": {"mib": "jobs:fds/mib"}, "outputs": {"n": "stdout"}}
        ]),
    );
    let (out, report) = run_json(&home, &d, &[], &[]);
    assert!(!out.status.success(), "`over` fails");
    let warn = stderr(&out);
    assert!(warn.contains("fd.json:") && warn.contains("`fd:0` is the job's stdin"), "{warn}");
    assert_eq!(job(&report, "fds")["status"], "done", "{report}");
    assert_eq!(get_output(&home, "fds", "mib"), vec![b'x'; 1 << 20]);
    assert_eq!(get_output(&home, "fds", "empty"), b"");
    assert_eq!(get_output(&home, "fds", "zero"), b"out\n");
    assert_eq!(get_output(&home, "fds", "two"), b"err\n");
    assert_eq!(String::from_utf8(get_output(&home, "seeded", "n")).unwrap().trim(), "1048576");
    let over = job(&report, "over");
    assert_eq!(over["status"], "failed");
    assert_eq!(over["exit"]["output_too_large"]["output"], "big", "{over}");

    // Bad fds are refused where they are written.
    let bad = home.write(
        "bad.json",
        r#"{"version": 1, "jobs": [{"id": "b", "image": "busybox:latest", "command": ["true"],
            "outputs": {"a": "fd:64", "b": "fd:x", "c": "fd:3", "d": "fd:3"}, "net": "yes"}]}"#,
    );
    let out = home.shoal(&["run", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(e.contains("bad.json:2:30: job `b`: `fd:64` is not an fd output"), "{e}");
    assert!(e.contains("`fd:x` is not an fd output"), "{e}");
    assert!(e.contains("outputs `c` (line 2) and `d` both name `fd:3`"), "{e}");
    assert!(e.contains("`net` must be true or false"), "{e}");
}

/// The seed's example DAG (examples/seed.json): its first job writes an OCI image archive to
/// `fd:0` (read as stdout, with a warning), the second runs that image, the third reads the
/// second's file.
#[test]
fn the_seeds_example_dag_runs_as_written() {
    let home = Home::with_busybox();
    let dir = home.path().join("ex");
    std::fs::create_dir_all(dir.join("seed")).unwrap();
    for f in ["seed.json", "seed/build-image.sh"] {
        std::fs::copy(repo_root().join("examples").join(f), dir.join(f)).unwrap();
    }
    let out = home.shoal(&["run", "--backend", "namespace", dir.join("seed.json").to_str().unwrap()]);
    assert_success(&out, "examples/seed.json");
    assert!(stderr(&out).contains("`fd:0` is the job's stdin"), "{}", stderr(&out));
    let result = String::from_utf8(get_output(&home, "j3", "out1")).unwrap();
    assert_eq!(result, "HELLO FROM THE IMAGE JOB J1 BUILT (FOO=BAZ)\nbuz\n");
}

/// fd outputs in a microVM: the guest's sandbox opens them as the host's does.
#[test]
fn fd_outputs_come_back_from_a_microvm() {
    let home = Home::with_busybox();
    if !crate::microvm::vm_ready(&home) {
        return;
    }
    let d = dag(
        &home,
        "vmfd.json",
        serde_json::json!([{"id": "vm", "image": "busybox:latest",
            "command": ["sh", "-c", "echo three >&3; head -c 1048576 /dev/zero >&7"],
            "outputs": {"three": "fd:3", "seven": "fd:7", "none": "fd:9"}}]),
    );
    let out = home.shoal(&["run", "--backend", "microvm-only", "--json", d.to_str().unwrap()]);
    assert_success(&out, "fd outputs in a microVM");
    assert_eq!(get_output(&home, "vm", "three"), b"three\n");
    assert_eq!(get_output(&home, "vm", "seven"), vec![0u8; 1 << 20]);
    assert_eq!(get_output(&home, "vm", "none"), b"");
}

/// Through a mesh: the submitting node fetches a presigned GET input and pins it (the DAG every
/// node reads names its bytes by BLAKE3 and its URL redacted), a job that uploads to a bucket runs
/// only on the node whose credentials may write there (`--label s3:results=write`), and a presigned
/// PUT is kept whole by the submitting node alone, which sends that output and then forgets it.
#[test]
fn in_a_mesh_a_presigned_input_is_pinned_at_submit_and_only_a_node_with_the_buckets_label_uploads() {
    use crate::mesh::{MeshNode, all_in, mesh_key, submit, wait_dag, wait_for_mesh};
    let Some(s3) = S3Server::start() else { return };
    let results = s3.bucket("results");
    s3.bucket("data");
    std::fs::write(s3.root.path().join("data/words.txt"), "one two three\nfour five\n").unwrap();
    let key_dir = tempfile::tempdir().unwrap();
    let key = mesh_key(key_dir.path());
    let at = ("/ip4/127.0.0.1/tcp/0", "127.0.0.1:0");
    // A has no credentials; B has them and says so with the bucket's label.
    let a = MeshNode::start_env(Home::with_busybox(), &key, &[], at, &[], &[]);
    let b = MeshNode::start_env(
        Home::with_busybox(),
        &key,
        &[a.listen.as_str()],
        at,
        &["--label", "s3:results=write"],
        &s3.env(),
    );
    wait_for_mesh(&[&a, &b]);
    let get = presign(&a.home, &s3, "s3://data/words.txt", &[]);
    let signature = get.split("X-Amz-Signature=").nth(1).unwrap().to_string();
    // A presigned PUT: A keeps it whole, the mesh sees it redacted, and A sends the output.
    let put = presign(&a.home, &s3, "s3://results/sum.txt", &["--put"]);
    let put_signature = put.split("X-Amz-Signature=").nth(1).unwrap().to_string();
    let d = dag(
        &a.home,
        "mesh.json",
        serde_json::json!([{"id": "count", "image": "busybox:latest",
            "command": ["sh", "-c", "wc -w /input/words; md5sum /input/words >&3"],
            "inputs": {"words": get}, "outputs": {"n": "stdout", "sum": "fd:3"},
            "upload": {"n": "s3://results/count.txt", "sum": put}}]),
    );
    let dag_hash = submit(&a, &d);
    wait_dag(&a, &dag_hash, Duration::from_secs(120), "the DAG done", |v| all_in(v, "done"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !results.join("count.txt").exists() {
        assert!(Instant::now() < deadline, "no upload; B's log:\n{}", b.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read_to_string(results.join("count.txt")).unwrap(), "5 /input/words\n");
    while !results.join("sum.txt").exists() {
        assert!(Instant::now() < deadline, "no upload by the submitting node; A's log:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(std::fs::read_to_string(results.join("sum.txt")).unwrap().ends_with("  /input/words\n"));
    // The DAG every node read: the input pinned, the signature gone.
    let (status, blob) = a.get(&format!("/v1/blobs/{dag_hash}"));
    assert_eq!(status, 200);
    let text = String::from_utf8(blob).unwrap();
    assert!(text.contains("X-Amz-Signature=REDACTED") && text.contains("#blake3="), "{text}");
    assert!(!text.contains(&signature) && !text.contains(&put_signature), "{text}");
    // B ran it and sent the output to the bucket its label names; A sent the presigned one, and
    // once sent keeps its URL nowhere.
    let ups = json(&b.cli(&["upload", "ls", "--json"]));
    assert_eq!(ups.as_array().unwrap().len(), 1, "{ups}");
    assert_eq!(ups[0]["state"], "done", "{ups}");
    assert_eq!(ups[0]["destination"], "s3://results/count.txt");
    let ups = json(&a.cli(&["upload", "ls", "--json"]));
    assert_eq!(ups.as_array().unwrap().len(), 1, "{ups}");
    assert_eq!(ups[0]["state"], "done", "{ups}");
    assert_eq!(ups[0]["dag"], dag_hash.as_str());
    // `shoal status` on A says where the DAG's outputs went.
    let status = a.cli(&["status", &dag_hash]);
    assert_success(&status, "shoal status");
    let text = stdout(&status);
    assert!(text.contains("upload count/sum → http://127.0.0.1:") && text.contains(": done (HTTP 200"), "{text}");
    assert!(!text.contains(&put_signature), "{text}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let kept = a.home.store().join("uploads/kept");
    while std::fs::read_dir(&kept).map(|d| d.count()).unwrap_or(0) > 0 {
        assert!(Instant::now() < deadline, "A still keeps the presigned URL after sending");
        std::thread::sleep(Duration::from_millis(100));
    }
    for n in [&a, &b] {
        for secret in [&signature, &put_signature] {
            assert!(!n.log().contains(secret.as_str()), "a node's log shows a signature");
        }
        let files = Command::new("grep").args(["-rlF", &put_signature]).arg(n.home.store()).output().unwrap();
        assert!(stdout(&files).trim().is_empty(), "the presigned PUT is still stored in {}", stdout(&files));
    }
}

/// The README's data example, as written: its own directory for /tmp/ and its own store; the
/// servers it starts are stopped when it ends.
#[test]
fn readme_data_in_and_out_runs_as_written() {
    if S3Server::start().is_none() {
        return;
    }
    let home = Home::with_busybox();
    let block = crate::held_home::readme_block("**Data in and out.**");
    let script = block.replace("/tmp/", &format!("{}/", home.path().display()));
    let bin_dir = shoal_bin().parent().unwrap().to_path_buf();
    let cargo_bin = s3s_fs().unwrap().parent().unwrap().to_path_buf();
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\nexport PATH={}:{}:$PATH\n{script}",
            bin_dir.display(),
            cargo_bin.display()
        ))
        .current_dir(repo_root())
        .env("SHOAL_HOME", home.store())
        .env("AWS_SHARED_CREDENTIALS_FILE", home.path().join("none"))
        .env("AWS_CONFIG_FILE", home.path().join("none"))
        .env_remove("RUST_LOG");
    let out = run_with_deadline(cmd);
    assert_success(&out, "the README's data example");
    for leftover in ["s3s-fs --host 127.0.0.1 --port 9014", "http.server 18714"] {
        let still = Command::new("pgrep").args(["-f", leftover]).output().unwrap();
        assert!(!still.status.success(), "`{leftover}` still runs after the example");
    }
    let text = stdout(&out);
    assert!(text.contains("uploaded count/n → s3://results/word-count.txt: done (HTTP 200"), "{text}");
    assert!(text.contains("\n9\n"), "{text}");
    let words = std::fs::read(repo_root().join("examples/data/words.txt")).unwrap();
    let sum = std::fs::read_to_string(home.path().join("s3/results/words.sha256")).unwrap();
    assert_eq!(sum, format!("{}  /input/words\n", sha256_hex(&words)));
    // `shoal blob fetch` printed the hash of the count's bytes.
    let count_hash = text.lines().find(|l| l.starts_with("blake3:")).expect("a hash");
    let out = home.shoal(&["blob", "get", count_hash]);
    assert_eq!(stdout(&out), "9\n");
}
