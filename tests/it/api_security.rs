//! The HTTP API as a stranger meets it, on real `shoal node` processes: requests from other web
//! sites (a foreign `Origin`, a rebound DNS name in `Host`, a `text/plain` body) are refused; tokens
//! with scopes; a node that would listen beyond loopback without a token refuses to start; and the
//! public explorer's limits. Requests are written by hand on a TCP socket, so every header is the
//! one a browser or an attacker would send.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::mesh::{MeshNode, mesh_key};
use crate::support::*;

/// A reply read off the socket.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Header names lower-cased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_else(|| panic!("no error in {self:?}")).to_string()
    }
}

/// `host:port` of a node's API (its URL without the scheme).
fn authority(node: &MeshNode) -> String {
    node.http.trim_start_matches("http://").trim_end_matches('/').to_string()
}

/// One request on a fresh connection. `headers` come as given; `Host` is the node's own unless
/// given, `Content-Length` is added.
fn raw(node: &MeshNode, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let addr = authority(node);
    let mut s = TcpStream::connect(&addr).expect("connect to the node");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).expect("read the reply");
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no header end: {bytes:?}"));
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let mut rest = bytes[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
        rest = dechunk(&rest);
    }
    Reply { status, headers, body: String::from_utf8_lossy(&rest).into_owned() }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = b.windows(2).position(|w| w == b"\r\n") else { return out };
        let size = usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + size]);
        b = &b[end + 2 + size + 2..];
    }
}

fn one_job_dag(text: &str) -> String {
    json!({"version": 1, "jobs": [{"id": "j", "image": "busybox:latest", "command": ["echo", text],
        "outputs": {"o": "stdout"}}]})
    .to_string()
}

fn node_with(home: Home, extra: &[&str]) -> MeshNode {
    let key = mesh_key(home.path());
    MeshNode::start(home, &key, &[], extra)
}

// ---------------------------------------------------------------------------------------------
// Origin, Host and content types (issue 16, item 13)

#[test]
fn a_web_page_of_another_site_cannot_make_a_local_node_run_jobs() {
    let n = node_with(Home::with_busybox(), &[]);
    let own = authority(&n);
    let port = own.rsplit(':').next().unwrap().to_string();

    // What a page elsewhere can send without a preflight: a text/plain POST with its own Origin.
    let r = raw(
        &n,
        "POST",
        "/v1/dags",
        &[("Origin", "http://evil.example"), ("Content-Type", "text/plain")],
        one_job_dag("from a web page").as_bytes(),
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.error().contains("Origin `http://evil.example` is not this node's"), "{r:?}");
    // The same with a JSON body: the Origin alone refuses it.
    let r = raw(
        &n,
        "POST",
        "/v1/dags",
        &[("Origin", "http://evil.example"), ("Content-Type", "application/json")],
        one_job_dag("json from a web page").as_bytes(),
    );
    assert_eq!(r.status, 403, "{r:?}");
    // `Origin: null` (a sandboxed frame, a file: page) is no origin of this node either.
    let r = raw(&n, "POST", "/v1/dags", &[("Origin", "null"), ("Content-Type", "application/json")], b"{}");
    assert_eq!(r.status, 403, "{r:?}");

    // DNS rebinding: the attacker's name now resolves to 127.0.0.1; the browser sends it as Host.
    let rebound = format!("rebind.evil.example:{port}");
    let r = raw(
        &n,
        "POST",
        "/v1/dags",
        &[("Host", &rebound), ("Origin", &format!("http://{rebound}")), ("Content-Type", "application/json")],
        one_job_dag("rebound").as_bytes(),
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.error().contains("Host `rebind.evil.example"), "{r:?}");
    assert!(r.error().contains("--http-host"), "the refusal says how to allow a name: {r:?}");
    // Reads too: a rebound page must not read the ledger.
    let r = raw(&n, "GET", "/v1/dags", &[("Host", &rebound)], b"");
    assert_eq!(r.status, 403, "{r:?}");
    // Another port of this host is another origin.
    let r = raw(&n, "GET", "/v1/dags", &[("Origin", "http://127.0.0.1:1")], b"");
    assert_eq!(r.status, 403, "{r:?}");

    // Bodies must say what they are: text/plain (or nothing) is refused with 415.
    let r = raw(&n, "POST", "/v1/dags", &[("Content-Type", "text/plain")], one_job_dag("plain").as_bytes());
    assert_eq!(r.status, 415, "{r:?}");
    assert!(r.error().contains("application/json"), "{r:?}");
    let r = raw(&n, "POST", "/v1/dags", &[], one_job_dag("untyped").as_bytes());
    assert_eq!(r.status, 415, "{r:?}");
    let r = raw(&n, "POST", "/v1/blobs", &[("Content-Type", "application/x-www-form-urlencoded")], b"a=b");
    assert_eq!(r.status, 415, "{r:?}");
    assert!(r.error().contains("application/octet-stream"), "{r:?}");
    assert_eq!(n.get_json("/v1/dags")["dags"], json!([]), "nothing refused reached the ledger");

    // The node's own spellings work: its address, `localhost`, with a same-origin Origin.
    let r = raw(
        &n,
        "POST",
        "/v1/dags",
        &[("Origin", &format!("http://{own}")), ("Content-Type", "application/json")],
        one_job_dag("same origin").as_bytes(),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let local = format!("localhost:{port}");
    let r = raw(&n, "GET", "/v1/dags", &[("Host", &local), ("Origin", &format!("http://{local}"))], b"");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["dags"].as_array().unwrap().len(), 1);
    let r = raw(&n, "POST", "/v1/blobs", &[("Content-Type", "application/octet-stream")], b"bytes");
    assert_eq!(r.status, 201, "{r:?}");
    // Cancel takes no body: none is needed.
    let dag = n.get_json("/v1/dags")["dags"][0]["dag"].as_str().unwrap().to_string();
    let r = raw(&n, "POST", &format!("/v1/dags/{dag}/cancel"), &[], b"");
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn the_explorer_page_keeps_working_from_its_own_origin_only() {
    let n = node_with(crate::explorer::home(), &[]);
    let own = format!("http://{}", authority(&n));
    let (content_type, body) = crate::explorer::multipart(&[
        crate::explorer::Part("request", None, json!({"entry": "sh", "main": "s.sh"}).to_string().as_bytes()),
        crate::explorer::Part("file", Some("s.sh"), b"echo same origin\n"),
    ]);
    // What the page's fetch sends: its own origin, multipart.
    let r = raw(&n, "POST", "/v1/explorer/runs", &[("Origin", &own), ("Content-Type", &content_type)], &body);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["stdout"]["text"], "same origin\n");
    // The page and its assets load (a browser sends no Origin on these GETs).
    for path in ["/", "/explorer/app.js", "/v1/explorer/catalogue"] {
        assert_eq!(raw(&n, "GET", path, &[], b"").status, 200, "{path}");
    }
    // A form on another site posting to it is refused.
    let r = raw(
        &n,
        "POST",
        "/v1/explorer/runs",
        &[("Origin", "https://evil.example"), ("Content-Type", &content_type)],
        &body,
    );
    assert_eq!(r.status, 403, "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// Tokens (issue 16, item 14)

/// `shoal token create` in `home`; returns the secret it printed.
fn create_token(home: &Home, name: &str, scope: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", "--name", name, "--scope", scope];
    args.extend_from_slice(extra);
    let out = home.shoal(&args);
    assert_success(&out, "shoal token create");
    let secret = stdout(&out).trim().to_string();
    assert!(secret.starts_with("shoal_"), "{secret}");
    assert!(stderr(&out).contains("shown only now"), "{}", stderr(&out));
    secret
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// `shoal ARGS` against `node` with this environment (SHOAL_TOKEN and the like).
fn cli_with(node: &MeshNode, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(shoal_bin());
    cmd.args(args)
        .env("SHOAL_NODE", &node.http)
        .env("SHOAL_HOME", node.home.store())
        .env_remove("RUST_LOG")
        .env_remove("SHOAL_TOKEN")
        .env_remove("SHOAL_TOKEN_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_deadline(cmd)
}

#[test]
fn a_node_off_loopback_refuses_to_start_without_a_token() {
    let home = Home::empty();
    let key = mesh_key(home.path());
    let node_args = |http: &str| {
        let mut cmd = std::process::Command::new(shoal_bin());
        cmd.args(["node", "--http", http, "--listen", "/ip4/127.0.0.1/tcp/0", "--blobs", "127.0.0.1:0"])
            .args(["--mesh-key", key.to_str().unwrap(), "--backend", "namespace", "--speed", "1000"])
            .env("SHOAL_HOME", home.store())
            .env_remove("RUST_LOG");
        cmd
    };
    let out = run_with_deadline(node_args("0.0.0.0:0"));
    assert!(!out.status.success(), "started without a token: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("which other machines can reach, and no API token exists"), "{err}");
    assert!(err.contains("shoal token create --name NAME --scope admin"), "{err}");
    assert!(!home.store().join("node.json").exists(), "it listened before refusing");

    // With a token it starts, and answers only with one.
    let secret = create_token(&home, "ops", "admin", &[]);
    let n = MeshNode::start(home, &key, &[], &["--http", "0.0.0.0:0"]);
    assert!(n.http.starts_with("http://0.0.0.0:"), "{}", n.http);
    let r = raw(&n, "GET", "/v1/dags", &[], b"");
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(raw(&n, "GET", "/v1/dags", &[("Authorization", &bearer(&secret))], b"").status, 200);
}

#[test]
fn tokens_are_checked_by_scope_refused_when_wrong_revoked_or_expired_and_never_logged() {
    let home = Home::with_busybox();
    let reader = create_token(&home, "dashboard", "read", &[]);
    let submitter = create_token(&home, "ci", "submit", &["--expires", "30d"]);
    let brief = create_token(&home, "brief", "read", &["--expires", "1s"]);
    let n = node_with(home, &["--http-auth", "--http-host", "shoal.example"]);
    let secrets = [&reader, &submitter, &brief];

    // No token: 401 with a challenge, and how to get one.
    let r = raw(&n, "GET", "/v1/dags", &[], b"");
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"shoal\""));
    assert!(r.error().contains("shoal token create"), "{r:?}");
    // A wrong one, or another scheme: 401, invalid_token.
    for auth in [bearer("shoal_0000"), bearer(&format!("{reader}x")), format!("Basic {reader}")] {
        let r = raw(&n, "GET", "/v1/dags", &[("Authorization", &auth)], b"");
        assert_eq!(r.status, 401, "{auth}: {r:?}");
        assert!(r.header("www-authenticate").unwrap().contains("error=\"invalid_token\""), "{r:?}");
    }
    // The page stays public; health too.
    assert_eq!(raw(&n, "GET", "/", &[], b"").status, 200);
    assert_eq!(raw(&n, "GET", "/v1/health", &[], b"").status, 200);
    // Names given with --http-host are the node's.
    assert_eq!(
        raw(&n, "GET", "/v1/dags", &[("Host", "shoal.example"), ("Authorization", &bearer(&reader))], b"").status,
        200
    );

    // Read: reads, but may not submit (403, insufficient_scope, naming the scope needed).
    assert_eq!(raw(&n, "GET", "/v1/dags", &[("Authorization", &bearer(&reader))], b"").status, 200);
    let dag = one_job_dag("by token");
    let r = raw(
        &n,
        "POST",
        "/v1/dags",
        &[("Authorization", &bearer(&reader)), ("Content-Type", "application/json")],
        dag.as_bytes(),
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.header("www-authenticate").unwrap().contains("error=\"insufficient_scope\", scope=\"submit\""));
    assert!(r.error().contains("the token `dashboard` has scope read; POST /v1/dags needs submit"), "{r:?}");

    // The CLI: without a token it says what to do; with $SHOAL_TOKEN or --token-file it works.
    let dag_file = n.home.write("dag.json", &dag);
    let out = cli_with(&n, &["submit", dag_file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("set SHOAL_TOKEN or pass --token-file"), "{}", stderr(&out));
    let out = cli_with(&n, &["submit", dag_file.to_str().unwrap(), "--wait"], &[("SHOAL_TOKEN", &submitter)]);
    assert_success(&out, "shoal submit with SHOAL_TOKEN");
    let token_file = n.home.write("token", &format!("{reader}\n"));
    let out = cli_with(&n, &["status", "--token-file", token_file.to_str().unwrap()], &[]);
    assert_success(&out, "shoal status --token-file");
    let out = cli_with(&n, &["peers", "--json"], &[("SHOAL_TOKEN_FILE", token_file.to_str().unwrap())]);
    assert_success(&out, "shoal peers with SHOAL_TOKEN_FILE");
    let out = cli_with(&n, &["get", "j", "o", "--node", &n.http], &[("SHOAL_TOKEN", &reader)]);
    assert_success(&out, "shoal get --node with a read token");
    assert_eq!(stdout(&out), "by token\n");

    // ls: names, scopes, dates, and when each was last used (written by the node, shortly).
    let start = Instant::now();
    let list = loop {
        let out = n.home.shoal(&["token", "ls", "--json"]);
        assert_success(&out, "shoal token ls");
        let list = json(&out);
        if list.as_array().unwrap().iter().filter(|t| !t["last_used_unix_ms"].is_null()).count() == 2 {
            break list;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "last use never recorded: {list:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let names: Vec<(&str, &str)> =
        list.as_array().unwrap().iter().map(|t| (t["name"].as_str().unwrap(), t["scope"].as_str().unwrap())).collect();
    assert_eq!(names, [("dashboard", "read"), ("ci", "submit"), ("brief", "read")]);
    assert!(list[1]["expires_unix_ms"].as_u64().unwrap() > list[1]["created_unix_ms"].as_u64().unwrap());
    assert!(list[0]["expires_unix_ms"].is_null());
    assert!(list[2]["last_used_unix_ms"].is_null());
    let table = stdout(&n.home.shoal(&["token", "ls"]));
    assert!(table.contains("dashboard") && table.contains("last used"), "{table}");

    // Expired: 401 naming it. (Its one second has passed: the CLI runs above took longer.)
    let expires = list[2]["expires_unix_ms"].as_u64().unwrap();
    while std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64 <= expires {
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = raw(&n, "GET", "/v1/dags", &[("Authorization", &bearer(&brief))], b"");
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.error().contains("the token `brief` has expired"), "{r:?}");

    // Revoked: refused from the next request on, while the node runs.
    let out = n.home.shoal(&["token", "revoke", "dashboard"]);
    assert_success(&out, "shoal token revoke");
    let r = raw(&n, "GET", "/v1/dags", &[("Authorization", &bearer(&reader))], b"");
    assert_eq!(r.status, 401, "{r:?}");
    let out = n.home.shoal(&["token", "revoke", "dashboard"]);
    assert!(!out.status.success() && stderr(&out).contains("no token is named `dashboard`; there are: ci, brief"));

    // No secret is in the node's log (debug level), nor anywhere in its store: the ledger, the
    // records, the token list (which holds hashes).
    let log = n.log();
    assert!(log.contains("DEBUG"), "the node logged at debug level");
    let mut files = vec![n.home.store()];
    let mut seen = 0;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if p.is_file() && !p.is_symlink() {
            let bytes = std::fs::read(&p).unwrap_or_default();
            for s in secrets {
                assert!(!bytes.windows(s.len()).any(|w| w == s.as_bytes()), "a token secret is in {}", p.display());
            }
            seen += 1;
        }
    }
    assert!(seen > 10, "only {seen} files looked at");
    for s in secrets {
        assert!(!log.contains(s.as_str()), "a token secret is in the node's log");
        assert!(!log.contains(&s[s.len() - 16..]), "part of a token secret is in the node's log");
    }
}

// ---------------------------------------------------------------------------------------------
// The public explorer (issue 16, item 14)

/// The explorer tests' catalogue, with an entry that asks for a network.
fn public_home() -> Home {
    let home = Home::with_busybox();
    let dir = home.store().join("explorer");
    std::fs::create_dir_all(&dir).unwrap();
    let net = "\n[[image]]\nid = \"net\"\ntitle = \"with a network\"\nimage = \"busybox:latest\"\n\
               command = [\"sh\", \"-c\", \"ip addr\"]\nnetwork = true\n";
    std::fs::write(dir.join("catalogue.toml"), format!("{}{net}", crate::explorer::TEST_CATALOGUE)).unwrap();
    home
}

fn explorer_post(node: &MeshNode, request: &Value, files: &[(&str, &[u8])], auth: Option<&str>) -> Reply {
    let req = request.to_string();
    let mut parts = vec![crate::explorer::Part("request", None, req.as_bytes())];
    for (name, content) in files {
        parts.push(crate::explorer::Part("file", Some(name), content));
    }
    let (content_type, body) = crate::explorer::multipart(&parts);
    let mut headers = vec![("Content-Type", content_type.as_str())];
    let auth = auth.map(bearer);
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    raw(node, "POST", "/v1/explorer/runs", &headers, &body)
}

#[test]
fn a_public_explorer_serves_strangers_catalogue_runs_within_limits() {
    let home = public_home();
    let submitter = create_token(&home, "friend", "submit", &[]);
    // The disk floor is the next test's; this one must not depend on how full the host's disk is.
    let args = [
        "--explorer-public",
        "--explorer-runs-per-minute",
        "2",
        "--explorer-upload-per-day",
        "4KiB",
        "--explorer-disk-free-min-percent",
        "0",
    ];
    let n = node_with(home, &args);
    let script: &[(&str, &[u8])] = &[("s.sh", b"echo hello stranger\n")];

    // Strangers get the page and the catalogue, not the rest of the API.
    let cat = raw(&n, "GET", "/v1/explorer/catalogue", &[], b"");
    assert_eq!(cat.status, 200, "{cat:?}");
    assert_eq!(cat.json()["public"], true);
    assert_eq!(raw(&n, "GET", "/v1/dags", &[], b"").status, 401);
    let r = raw(&n, "POST", "/v1/dags", &[("Content-Type", "application/json")], one_job_dag("x").as_bytes());
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(raw(&n, "POST", "/v1/blobs", &[("Content-Type", "application/octet-stream")], b"x").status, 401);

    // Refused requests cost no run: no network, catalogue entries only, good options.
    let r = explorer_post(&n, &json!({"entry": "net"}), &[], None);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.error().contains("runs with a network, which this node offers to token holders only"), "{r:?}");
    let r = explorer_post(&n, &json!({"entry": "nope"}), script, None);
    assert_eq!(r.status, 404, "{r:?}");
    let r = explorer_post(&n, &json!({"entry": "sh", "options": {"count": 99}}), script, None);
    assert_eq!(r.status, 400, "{r:?}");

    // The day's upload quota (4 KiB here): a larger upload is refused, to be tried after midnight.
    let big = vec![b'#'; 5 << 10];
    let r = explorer_post(&n, &json!({"entry": "sh", "main": "s.sh"}), &[("s.sh", &big)], None);
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.error().contains("4.0 KiB a day one address may upload"), "{r:?}");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");

    // A catalogue run works, and says how long its permalink is kept.
    let r = explorer_post(&n, &json!({"entry": "sh", "main": "s.sh"}), script, None);
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["stdout"]["text"], "hello stranger\n");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let kept = v["kept_until_unix_ms"].as_u64().unwrap();
    assert!(kept > now_ms + 29 * 86_400_000 && kept <= now_ms + 31 * 86_400_000, "{kept}");
    // Its permalink is for anyone; the view says the same.
    let hex = v["record"].as_str().unwrap().trim_start_matches("blake3:");
    let view = raw(&n, "GET", &format!("/v1/explorer/runs/{hex}"), &[], b"");
    assert_eq!(view.status, 200, "{view:?}");
    assert_eq!(view.json()["kept_until_unix_ms"], kept);
    assert_eq!(raw(&n, "GET", view.json()["stdout"]["url"].as_str().unwrap(), &[], b"").body, "hello stranger\n");

    // Past the rate (2 a minute: the quota refusal and the run above): 429 with Retry-After.
    let r = explorer_post(&n, &json!({"entry": "sh", "main": "s.sh"}), &[("s.sh", b"echo again\n")], None);
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.error().contains("at most 2 anonymous runs a minute from one address"), "{r:?}");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // A token holder is not counted, and may use a network entry.
    let r = explorer_post(&n, &json!({"entry": "sh", "main": "s.sh"}), &[("s.sh", b"echo friend\n")], Some(&submitter));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["stdout"]["text"], "friend\n");

    // A record that is not an explorer run is not shown to strangers.
    let out = cli_with(
        &n,
        &["submit", n.home.write("d.json", &one_job_dag("private")).to_str().unwrap(), "--wait", "--json"],
        &[("SHOAL_TOKEN", &submitter)],
    );
    assert_success(&out, "shoal submit");
    let record = json(&out)["jobs"]["j"]["record"].as_str().unwrap().to_string();
    let r = raw(&n, "GET", &format!("/v1/explorer/runs/{record}"), &[], b"");
    assert_eq!(r.status, 404, "{r:?}");
    let r = raw(&n, "GET", &format!("/v1/explorer/runs/{record}"), &[("Authorization", &bearer(&submitter))], b"");
    assert_eq!(r.status, 200, "{r:?}");
    // Nor are its files, though a stranger knows their hash (regression: any stored blob was served).
    let url = r.json()["stdout"]["url"].as_str().unwrap().to_string();
    let r = raw(&n, "GET", &url, &[], b"");
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.error().contains("no explorer run shows the file"), "{r:?}");
    let r = raw(&n, "GET", &url, &[("Authorization", &bearer(&submitter))], b"");
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn a_public_explorer_refuses_strangers_past_its_disk_high_water_mark() {
    let home = public_home();
    let submitter = create_token(&home, "friend", "submit", &[]);
    // Any file system has less than 100 % free: the mark is passed from the start.
    let n = node_with(home, &["--explorer-public", "--explorer-disk-free-min-percent", "100"]);
    let script: &[(&str, &[u8])] = &[("s.sh", b"echo hi\n")];
    let r = explorer_post(&n, &json!({"entry": "sh", "main": "s.sh"}), script, None);
    assert_eq!(r.status, 507, "{r:?}");
    assert!(r.error().contains("this node is short of disk"), "{r:?}");
    assert!(r.error().contains("below the 100 % it keeps free"), "{r:?}");
    // Token holders are the operator's to account for.
    let r = explorer_post(&n, &json!({"entry": "sh", "main": "s.sh"}), script, Some(&submitter));
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn an_explorer_permalink_outlives_gc_for_as_long_as_it_is_promised() {
    let home = crate::explorer::home();
    let key = mesh_key(home.path());
    let n = MeshNode::start(home, &key, &[], &["--explorer-keep-days", "7"]);
    // A failed run is in no action-cache entry; the run after it replaces it as the job's latest.
    let r = explorer_post(&n, &json!({"entry": "sh", "main": "s.sh"}), &[("s.sh", b"echo kept; exit 3\n")], None);
    assert_eq!(r.status, 200, "{r:?}");
    let failed = r.json();
    assert_eq!(failed["ok"], false);
    let kept = failed["kept_until_unix_ms"].as_u64().unwrap();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(kept > now_ms + 6 * 86_400_000 && kept <= now_ms + 7 * 86_400_000, "{kept}");
    let r = explorer_post(&n, &json!({"entry": "sh", "main": "s.sh"}), &[("s.sh", b"echo later\n")], None);
    assert_eq!(r.status, 200, "{r:?}");
    let mut n = n;
    n.kill();
    let out = n.home.shoal(&["gc", "--json"]);
    assert_success(&out, "shoal gc");
    assert!(json(&out)["blobs_removed"].as_u64().unwrap() > 0, "gc removed something: {}", stdout(&out));
    let n = n.restart(&key, &[]);
    let hex = failed["record"].as_str().unwrap().trim_start_matches("blake3:");
    let view = raw(&n, "GET", &format!("/v1/explorer/runs/{hex}"), &[], b"");
    assert_eq!(view.status, 200, "{view:?}");
    let view = view.json();
    assert_eq!(view["stdout"]["text"], "kept\n");
    assert_eq!(view["inputs"][0]["text"], "echo kept; exit 3\n");
    assert_eq!(view["kept_until_unix_ms"], kept);
}
