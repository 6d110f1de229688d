//! The Program Explorer on a real `shoal node --backend namespace`: its API (cache hits, limits, bad
//! options, permalinks, timeouts, out-of-memory) over HTTP, and the page in real headless Chromium
//! (tests/browser/explorer.mjs, playwright-core driving Debian's chromium).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::mesh::{MeshNode, mesh_key, wait_for_mesh};
use crate::support::*;

/// A catalogue of a busybox entry whose options cover every kind of form field, and one that runs out of
/// memory.
pub(crate) const TEST_CATALOGUE: &str = r#"
version = 1
[types]
"text/x-shellscript" = ["sh"]
"text/plain" = ["txt"]

[[image]]
id = "sh"
title = "busybox sh"
image = "busybox:latest"
inputs = ["text/x-shellscript"]
outputs = ["text/plain"]
command = ["sh", "{main}", "{mode}", "{count}", "{loud}", "{name}"]
timeout = "2s"

[[image.options]]
name = "mode"
type = "choice"
choices = ["lower", "upper"]
default = "lower"

[[image.options]]
name = "count"
label = "Count"
type = "integer"
min = 1
max = 5
default = 2

[[image.options]]
name = "loud"
type = "boolean"
flag = "loud"
off = "quiet"

[[image.options]]
name = "name"
type = "string"
max_len = 16
default = "world"

[[image]]
id = "hog"
title = "a memory hog"
image = "busybox:latest"
command = ["sh", "-c", "echo start; head -c 400000000 /dev/zero | sort > /dev/null"]
memory = "32MiB"
"#;

const SCRIPT: &str = r#"mode=$1 count=$2 loud=$3 name=$4
i=0
while [ $i -lt $count ]; do echo "hello $name ($mode, $loud)"; i=$((i+1)); done
tr a-z A-Z < /input/data.txt > /output/upper.txt
read line
echo "stdin: $line"
echo oops >&2
"#;

/// A home with busybox:latest and the test catalogue in its store.
pub(crate) fn home() -> Home {
    let home = Home::with_busybox();
    let dir = home.store().join("explorer");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("catalogue.toml"), TEST_CATALOGUE).unwrap();
    home
}

/// A node of its own mesh with busybox:latest and the test catalogue.
fn node() -> MeshNode {
    let home = home();
    let key = mesh_key(home.path());
    MeshNode::start(home, &key, &[], &[])
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(60))).build(),
    )
}

/// One part of a multipart body: field name, file name, content.
pub(crate) struct Part<'a>(pub &'a str, pub Option<&'a str>, pub &'a [u8]);

pub(crate) fn multipart(parts: &[Part]) -> (String, Vec<u8>) {
    let boundary = "shoal-test-boundary-7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for Part(name, file, content) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n").as_bytes()),
        }
        body.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// POSTs a run: the request JSON, then the files, then stdin if given.
fn run(node: &MeshNode, request: &Value, files: &[(&str, &[u8])], stdin: Option<&[u8]>) -> (u16, Value) {
    let req = request.to_string();
    let mut parts = vec![Part("request", None, req.as_bytes())];
    for (name, content) in files {
        parts.push(Part("file", Some(name), content));
    }
    if let Some(s) = stdin {
        parts.push(Part("stdin", None, s));
    }
    let (content_type, body) = multipart(&parts);
    post(node, &content_type, &body)
}

fn post(node: &MeshNode, content_type: &str, body: &[u8]) -> (u16, Value) {
    let mut resp = agent()
        .post(format!("{}/v1/explorer/runs", node.http))
        .header("content-type", content_type)
        .send(body)
        .expect("POST /v1/explorer/runs");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

fn get(node: &MeshNode, path: &str) -> (u16, String, String) {
    let mut resp = agent().get(format!("{}{path}", node.http)).call().expect("GET");
    let status = resp.status().as_u16();
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (status, ct, resp.body_mut().with_config().limit(64 << 20).read_to_string().unwrap())
}

#[test]
fn explorer_answers_an_identical_request_from_the_cache_and_its_permalink_reloads_it() {
    let n = node();
    let cat = n.get_json("/v1/explorer/catalogue");
    assert_eq!(cat["entries"][0]["id"], "sh");
    assert_eq!(cat["entries"][0]["available"], true, "{cat}");
    assert_eq!(cat["entries"][0]["options"][1]["type"], "integer");
    assert_eq!(cat["limits"]["files_max"], 32);

    let request = json!({"entry": "sh", "options": {"count": 3, "loud": true}, "main": "script.sh"});
    let files: &[(&str, &[u8])] = &[("script.sh", SCRIPT.as_bytes()), ("data.txt", b"shoal explorer\n")];
    let (status, first) = run(&n, &request, files, Some(b"typed in\n"));
    assert_eq!(status, 200, "{first:#}");
    assert_eq!(first["ok"], true, "{first:#}");
    assert_eq!(first["cached"], false);
    let hello = "hello world (lower, loud)\n";
    assert_eq!(first["stdout"]["text"], format!("{}stdin: typed in\n", hello.repeat(3)));
    assert_eq!(first["stderr"]["text"], "oops\n");
    assert_eq!(first["files"][0]["name"], "upper.txt");
    assert_eq!(first["files"][0]["text"], "SHOAL EXPLORER\n");
    assert_eq!(first["backend"], "namespace");
    assert_eq!(
        first["run_record"]["job"]["command"],
        json!(["sh", "/input/script.sh", "lower", "3", "loud", "world"]),
        "options rendered into argv"
    );

    // The same request again: the action cache answers, with the same record.
    let (status, again) = run(&n, &request, files, Some(b"typed in\n"));
    assert_eq!(status, 200, "{again:#}");
    assert_eq!(again["cached"], true, "{again:#}");
    assert_eq!(again["record"], first["record"]);
    assert_eq!(again["stdout"], first["stdout"]);
    // Options equal to the defaults are the same request.
    let explicit = json!({"entry": "sh", "options": {"count": 3, "loud": true, "mode": "lower", "name": "world"},
        "main": "script.sh"});
    assert_eq!(run(&n, &explicit, files, Some(b"typed in\n")).1["cached"], true);
    // Another option value is another job.
    let other = json!({"entry": "sh", "options": {"count": 1, "mode": "upper"}, "main": "script.sh"});
    let (_, third) = run(&n, &other, files, Some(b"typed in\n"));
    assert_eq!(third["cached"], false);
    assert_ne!(third["record"], first["record"]);
    assert_eq!(third["stdout"]["text"], "hello world (upper, quiet)\nstdin: typed in\n");

    // The permalink: the page, and a view with the inputs, options and results.
    let permalink = first["permalink"].as_str().unwrap();
    let hex = first["record"].as_str().unwrap().trim_start_matches("blake3:");
    assert_eq!(permalink, format!("/r/{hex}"));
    let (status, ct, html) = get(&n, permalink);
    assert_eq!((status, ct.as_str()), (200, "text/html; charset=utf-8"));
    assert!(html.contains("Program Explorer") && html.contains("/explorer/app.js"), "{html}");
    let view = n.get_json(&format!("/v1/explorer/runs/{hex}"));
    assert_eq!(view["entry"], "sh");
    assert_eq!(view["main"], "script.sh");
    assert_eq!(view["options"], json!({"count": 3, "loud": true, "mode": "lower", "name": "world"}));
    let inputs: Vec<(&str, &str)> = view["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), i["text"].as_str().unwrap()))
        .collect();
    assert_eq!(inputs, [("data.txt", "shoal explorer\n"), ("script.sh", SCRIPT)]);
    assert_eq!(view["stdin"]["text"], "typed in\n");
    assert_eq!(view["stdout"], first["stdout"]);
    assert_eq!(view["files"], first["files"]);
    assert!(view.get("cached").is_none(), "a permalink view is not a cache answer");

    // Output links serve the bytes, typed, under a sandboxing CSP.
    let url = view["files"][0]["url"].as_str().unwrap();
    let mut resp = agent().get(format!("{}{url}", n.http)).call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    assert!(h["content-security-policy"].to_str().unwrap().starts_with("sandbox"));
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(resp.body_mut().read_to_string().unwrap(), "SHOAL EXPLORER\n");
    // The record is the node's own run record.
    let rec = n.get_json(view["record_url"].as_str().unwrap());
    assert_eq!(rec["job_id"], "explore");

    let (status, _, _) = get(&n, &format!("/v1/explorer/runs/{}", "0".repeat(64)));
    assert_eq!(status, 404);
}

#[test]
fn explorer_refuses_bad_options_and_oversize_requests_with_reasons() {
    let n = node();
    let script: &[(&str, &[u8])] = &[("script.sh", b"echo hi\n")];

    // Every bad option is named, before any file is read.
    let bad = json!({"entry": "sh", "options": {"count": 9, "mode": "sideways", "loud": "yes", "colour": 1,
        "name": "far too long for this"}});
    let (status, v) = run(&n, &bad, script, None);
    assert_eq!(status, 400, "{v:#}");
    let named: Vec<&str> = v["problems"].as_array().unwrap().iter().map(|p| p["option"].as_str().unwrap()).collect();
    assert_eq!(named, ["colour", "mode", "count", "loud", "name"], "{v:#}");
    let error = v["error"].as_str().unwrap();
    for want in ["5 options of `sh` are wrong", "has no option `colour`", "Count: 9 is outside 1 to 5", "at most 16"] {
        assert!(error.contains(want), "{want:?} not in {error}");
    }
    // A refusal reads the rest of the body first, so a client still sending gets the reason, not a reset.
    let (status, v) = run(&n, &bad, &[("script.sh", &vec![b'#'; 3 << 20])], None);
    assert_eq!((status, v["problems"].as_array().map(Vec::len)), (400, Some(5)), "{v}");
    let (status, v) = run(&n, &json!({"entry": "nope"}), script, None);
    assert_eq!(status, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("it has: sh, hog"), "{v}");
    let (status, v) = run(&n, &json!({"entry": "sh"}), &[], None);
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("runs a file, and the request has none"), "{v}");
    let (status, v) = run(&n, &json!({"entry": "sh", "main": "other.sh"}), script, None);
    assert_eq!(status, 400, "{v}");

    // Limits: file count, one file's size, stdin's size, names.
    let names: Vec<String> = (0..33).map(|i| format!("f{i}.txt")).collect();
    let many: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    let (status, v) = run(&n, &json!({"entry": "sh", "main": "f0.txt"}), &many, None);
    assert_eq!(status, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("too many input files: at most 32"), "{v}");
    let big = vec![b'a'; (4 << 20) + 1];
    let (status, v) = run(&n, &json!({"entry": "sh"}), &[("script.sh", b"true"), ("big.txt", &big)], None);
    assert_eq!(status, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("the input file `big.txt` is larger than 4.0 MiB"), "{v}");
    let (status, v) = run(&n, &json!({"entry": "sh"}), script, Some(&big));
    assert_eq!(status, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("stdin is larger than 4.0 MiB"), "{v}");
    let (status, v) = run(&n, &json!({"entry": "sh"}), &[("../escape.sh", b"true")], None);
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("is not a file name the sandbox takes"), "{v}");
    // A body of another type is refused before the handler (415, naming the type it takes); a
    // multipart body that is not a form still gets the handler's reason.
    let (status, v) = post(&n, "application/json", b"{}");
    assert_eq!(status, 415, "{v}");
    assert!(v["error"].as_str().unwrap().contains("takes a body of type multipart/form-data"), "{v}");
    let (status, v) = post(&n, "multipart/form-data", b"{}");
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("send multipart/form-data"), "{v}");

    // A run past its time limit says so, naming the limit; the node still answers.
    let (status, v) = run(&n, &json!({"entry": "sh"}), &[("script.sh", b"echo started; sleep 30")], None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], false);
    assert_eq!(v["exit"], "timeout");
    assert!(v["message"].as_str().unwrap().contains("timed out: still running after 2.00 s"), "{v}");
    assert_eq!(v["stdout"]["text"], "started\n");
    let (status, again) = run(&n, &json!({"entry": "sh"}), &[("script.sh", b"echo started; sleep 30")], None);
    assert_eq!((status, &again["cached"]), (200, &json!(false)), "failures are not cached");
    // So does one that runs out of memory.
    let (status, v) = run(&n, &json!({"entry": "hog"}), &[], None);
    assert_eq!(status, 200, "{v}");
    assert_eq!((&v["ok"], &v["exit"]), (&json!(false), &json!("oom")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("out of memory: it needed more than 32.0 MiB"), "{v}");
    assert_eq!(n.get_json("/v1/health")["ok"], true);
}

#[test]
fn a_permalink_works_on_another_node_of_the_mesh() {
    let home = home();
    let key = mesh_key(home.path());
    let n0 = MeshNode::start(home, &key, &[], &[]);
    let n1 = MeshNode::start(Home::empty(), &key, &[&n0.listen], &[]);
    wait_for_mesh(&[&n0, &n1]);
    let files: &[(&str, &[u8])] = &[("script.sh", SCRIPT.as_bytes()), ("data.txt", b"far away\n")];
    let (status, v) = run(&n0, &json!({"entry": "sh", "main": "script.sh"}), files, Some(b"x\n"));
    assert_eq!((status, &v["ok"]), (200, &json!(true)), "{v:#}");
    let hex = v["record"].as_str().unwrap().trim_start_matches("blake3:");
    // n1 has neither the record nor its blobs: it fetches them from n0.
    let view = n1.get_json(&format!("/v1/explorer/runs/{hex}"));
    for field in ["record", "stdout", "stderr", "files", "inputs", "stdin", "options", "entry"] {
        assert_eq!(view[field], v[field], "{field}");
    }
    let (status, _, text) = get(&n1, view["files"][0]["url"].as_str().unwrap());
    assert_eq!((status, text.as_str()), (200, "FAR AWAY\n"));
    let (status, _, _) = get(&n1, &format!("/v1/explorer/runs/{}", "1".repeat(64)));
    assert_eq!(status, 404);
}

/// The root filesystems scripts/build-explorer-images.sh keeps (the same default).
pub(crate) fn explorer_rootfs(tool: &str) -> PathBuf {
    let cache = std::env::var_os("SHOAL_EXPLORER_ROOTFS").map(PathBuf::from).unwrap_or_else(|| {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
        base.join("shoal/explorer-rootfs")
    });
    cache.join(tool)
}

/// What the browser test needs, each missing one with its fix; empty when all is there.
fn browser_test_missing(browser_dir: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    if !Path::new("/usr/bin/chromium").is_file() {
        missing.push("/usr/bin/chromium (Debian's chromium; scripts/setup.sh installs it)".to_string());
    }
    if !browser_dir.join("node_modules/playwright-core").is_dir() {
        missing.push(format!("{}/node_modules/playwright-core (setup runs `npm ci` there)", browser_dir.display()));
    }
    if Command::new("node").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        missing.push("node (Node.js)".to_string());
    }
    for tool in ["gcc", "graphviz"] {
        if !explorer_rootfs(tool).join("usr/bin").is_dir() {
            missing.push(format!("{} (scripts/build-explorer-images.sh makes it)", explorer_rootfs(tool).display()));
        }
    }
    missing
}

#[test]
fn explorer_in_headless_chromium_runs_gcc_and_dot_and_reloads_a_permalink() {
    let browser_dir = repo_root().join("tests/browser");
    let missing = browser_test_missing(&browser_dir);
    if !missing.is_empty() {
        let required =
            std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var("SHOAL_REQUIRE_VM").is_ok_and(|v| v == "1");
        let msg = format!("the browser test needs: {}", missing.join("; "));
        assert!(!required, "{msg}");
        eprintln!("skipping (not in CI): {msg}");
        return;
    }
    let home = Home::with_busybox();
    for tool in ["gcc", "graphviz"] {
        let dir = explorer_rootfs(tool);
        let out = home.shoal(&[
            "image",
            "build",
            dir.to_str().unwrap(),
            "--tag",
            &format!("{tool}:bookworm"),
            "--env",
            "PATH=/usr/local/bin:/usr/bin:/bin",
        ]);
        assert_success(&out, &format!("shoal image build {tool}"));
    }
    let key = mesh_key(home.path());
    let n = MeshNode::start(home, &key, &[], &[]);
    let mut cmd = Command::new("node");
    cmd.arg(browser_dir.join("explorer.mjs")).arg(&n.http).current_dir(&browser_dir);
    if let Some(shot) = std::env::var_os("SHOAL_EXPLORER_SCREENSHOT") {
        cmd.arg("--screenshot").arg(shot);
    }
    let out = run_with_deadline(cmd);
    eprintln!("{}{}", stdout(&out), stderr(&out));
    assert_success(&out, "node tests/browser/explorer.mjs");
    assert!(stdout(&out).contains("\"ok\":true"), "{}", stdout(&out));
}

#[test]
fn shoal_explore_starts_a_node_once_and_then_finds_it() {
    let home = Home::with_busybox();
    let explore = || home.shoal(&["explore", "--no-open", "--http", "127.0.0.1:0", "--backend", "namespace"]);
    let out = explore();
    assert_success(&out, "shoal explore");
    let url = stdout(&out).trim().trim_end_matches('/').to_string();
    let pid: i32 = stderr(&out)
        .split("(pid ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in: {}", stderr(&out)));
    let stop = Stop(pid);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let mut resp = agent().get(format!("{url}/")).call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.body_mut().read_to_string().unwrap().contains("Program Explorer"));
    // Again: the running node is found, none is started.
    let again = explore();
    assert_success(&again, "shoal explore (again)");
    assert_eq!(stdout(&again).trim().trim_end_matches('/'), url);
    assert!(!stderr(&again).contains("started a node"), "{}", stderr(&again));
    drop(stop);
}

/// Ends the node `shoal explore` started (it runs on by design) when the test ends, passing or not.
struct Stop(i32);

impl Drop for Stop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the node this test started; no memory is involved.
        unsafe {
            libc::kill(self.0, libc::SIGTERM);
        }
    }
}

/// `--explorer-provenance REPO`: each explorer run that the cache did not answer is a commit,
/// `/c/<commit>` opens it (the permalink of its run), and `shoal provenance export /r/<record>`
/// writes a permalink's run to another repository.
#[test]
fn explorer_runs_are_committed_and_a_commit_opens_its_permalink() {
    let home = home();
    let key = mesh_key(home.path());
    let repo = home.path().join("explorer-runs");
    let n = MeshNode::start_env(
        home,
        &key,
        &[],
        ("/ip4/127.0.0.1/tcp/0", "127.0.0.1:0"),
        &["--explorer-provenance", repo.to_str().unwrap()],
        &[("GIT_AUTHOR_NAME", "Explorer".to_string()), ("GIT_AUTHOR_EMAIL", "explorer@example.org".to_string())],
    );
    let request = json!({"entry": "sh", "options": {"count": 1}, "main": "script.sh"});
    let files: &[(&str, &[u8])] = &[("script.sh", SCRIPT.as_bytes()), ("data.txt", b"to the repo\n")];
    let (status, first) = run(&n, &request, files, Some(b"x\n"));
    assert_eq!(status, 200, "{first:#}");
    let (_, again) = run(&n, &request, files, Some(b"x\n"));
    assert_eq!(again["cached"], true);
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git").arg("-C").arg(&repo).args(args).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    // One commit: the cached answer is the same run.
    let log = git(&["log", "--format=%H %an %s"]);
    assert_eq!(log.lines().count(), 1, "{log}");
    let permalink = first["permalink"].as_str().unwrap();
    assert!(log.contains(&format!("Explorer shoal provenance export {permalink}")), "{log}");
    let commit = log.split_whitespace().next().unwrap().to_string();
    let dag: Value = serde_json::from_str(&git(&["show", "HEAD:dag.json"])).unwrap();
    assert!(dag["jobs"][0]["image"].as_str().unwrap().starts_with("blake3:"), "{dag}");
    // /c/<commit> sends the browser to the run's permalink.
    let no_redirects = ureq::Agent::new_with_config(
        ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build(),
    );
    let resp = no_redirects.get(format!("{}/c/{commit}", n.http)).call().unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(resp.headers().get("location").unwrap().to_str().unwrap(), permalink);
    let (status, _, body) = get(&n, "/c/0123456789abcdef0123");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("has no commit"), "{body}");
    // The CLI exports a permalink's run through the node, the same tree as the node's commit.
    let other = Home::empty();
    let dest = other.path().join("mine");
    let out = Command::new(shoal_bin())
        .args(["provenance", "export", permalink, "--repo", dest.to_str().unwrap(), "--node", &n.http])
        .env("SHOAL_HOME", other.store())
        .env("GIT_AUTHOR_NAME", "Ada")
        .env("GIT_AUTHOR_EMAIL", "ada@example.org")
        .output()
        .unwrap();
    assert_success(&out, "shoal provenance export /r/ --node");
    let tree = |r: &Path| {
        let out = std::process::Command::new("git").arg("-C").arg(r).args(["rev-parse", "HEAD^{tree}"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(tree(&dest), tree(&repo));
}
