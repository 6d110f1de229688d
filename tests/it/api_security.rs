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
