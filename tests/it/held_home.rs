//! The CLI on the home of a running node: every command that uses the store goes through the node
//! (sled lets one process open a store) and prints what it prints when it opens the store itself;
//! with the node gone (a stale `node.json` left by kill -9), the same commands open the store. And
//! the README's three-node example, run as written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::mesh::{MeshNode, mesh_key};
use crate::support::*;

/// Longest the README's example may take (three nodes, the pipeline on microVMs under TCG): with
/// the stop below, under nextest's 300 s limit, so a slow run still stops its nodes and QEMUs
/// itself (nextest's kill of the test left them running).
const README_TIMEOUT: Duration = Duration::from_secs(240);
/// Longest the README's background processes may take to stop once asked.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

const DAG: &str = r#"{"version": 1, "jobs": [
  {"id": "a", "image": "busybox:latest",
   "command": ["sh", "-c", "cat /input/f; ls -l /input/d | tail -n +2 | awk '{print $1, $NF}'; echo to-stderr >&2; mkdir -p /output/t/sub && cp /input/f /output/t/sub/copy && chmod 4755 /output/t/sub/copy"],
   "inputs": {"f": "file:in.txt", "d": "file:data"},
   "outputs": {"out": "stdout", "t": "dir:/output/t"}},
  {"id": "b", "image": "busybox:latest", "command": ["cat", "/input/m"],
   "inputs": {"m": "file:missing.txt"}, "outputs": {"out": "stdout"}},
  {"id": "c", "image": "busybox:latest", "command": ["cat", "/input/x"],
   "inputs": {"x": "jobs:a/out"}, "outputs": {"out": "stdout"}}
]}"#;

/// What the commands print, to compare through the node and directly.
#[derive(Debug, PartialEq)]
struct Seen {
    image: String,
    imported: (String, String),
    tree: String,
    table: (String, String),
    json: String,
    get: Vec<u8>,
    get_tree: Vec<String>,
    log: (String, String),
    show: String,
    images: String,
    no_such_job: String,
    no_such_output: String,
    blob_tree: Vec<String>,
}

/// Every file under `dir` with its mode and contents (or link target), sorted.
fn listing(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let (path, md) = (e.path(), e.metadata().unwrap());
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            let mode = std::fs::symlink_metadata(&path).unwrap().permissions().mode();
            let what = if std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display())
            } else if md.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else {
                String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned()
            };
            out.push(format!("{rel} {mode:o} {what}"));
        }
    }
    out.sort();
    out
}

fn ok(out: Output, what: &str) -> Output {
    assert_success(&out, what);
    out
}

/// Runs the commands of a session on `home` (through its node or not), returning what they print.
fn session(home: &Home, round: &str) -> Seen {
    let image = ok(
        home.shoal(&[
            "image",
            "build",
            "rootfs",
            "--tag",
            "busybox:latest",
            "--env",
            "PATH=/bin:/sbin:/usr/bin:/usr/sbin",
        ]),
        "image build",
    );
    // The layout `image build` wrote, imported as a directory and as an OCI archive.
    let layout = home.path().join(format!("layout-{round}"));
    ok(
        home.shoal(&["image", "build", "rootfs", "--tag", "kept:1", "--oci-out", layout.to_str().unwrap()]),
        "--oci-out",
    );
    let archive = home.path().join(format!("layout-{round}.tar"));
    let tar = Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&archive).arg(".").status().unwrap();
    assert!(tar.success());
    let from_dir = ok(home.shoal(&["image", "import", layout.to_str().unwrap(), "--tag", "dir:1"]), "import DIR");
    let from_tar = ok(home.shoal(&["image", "import", archive.to_str().unwrap(), "--tag", "tar:1"]), "import TAR");
    let tree = ok(home.shoal(&["blob", "put", "data"]), "blob put DIR");
    let tree = stdout(&tree).trim().to_string();
    let blob_dir = home.path().join(format!("blob-{round}"));
    ok(home.shoal(&["blob", "get", &tree, "-o", blob_dir.to_str().unwrap()]), "blob get TREE");
    // A first run fills the cache (it may already be full: the second round finds the first's
    // records); the outputs below are those of cached runs, the same in both rounds.
    let first = home.shoal(&["run", "dag.json", "--backend", "namespace", "--json"]);
    assert_eq!(first.status.code(), Some(1), "job b fails, the others run: {}\n{}", stdout(&first), stderr(&first));
    let table = home.shoal(&["run", "dag.json", "--backend", "namespace"]);
    assert_eq!(table.status.code(), Some(1), "{}", stderr(&table));
    let json_run = home.shoal(&["run", "dag.json", "--backend", "namespace", "--json"]);
    assert_eq!(json_run.status.code(), Some(1));
    let get = ok(home.shoal(&["get", "a", "out"]), "get a out");
    let tree_dir = home.path().join(format!("t-{round}"));
    ok(home.shoal(&["get", "a", "t", "-o", tree_dir.to_str().unwrap()]), "get a t -o DIR");
    let log = ok(home.shoal(&["log", "a"]), "log a");
    let show = ok(home.shoal(&["show", "a"]), "show a");
    let images = ok(home.shoal(&["image", "ls", "--json"]), "image ls");
    let no_such_job = home.shoal(&["show", "nosuchjob"]);
    assert_eq!(no_such_job.status.code(), Some(2));
    let no_such_output = home.shoal(&["get", "a", "nosuchoutput"]);
    assert_eq!(no_such_output.status.code(), Some(2));
    ok(home.shoal(&["blob", "ls"]), "blob ls");
    ok(home.shoal(&["gc"]), "gc");
    Seen {
        image: stdout(&image),
        imported: (stdout(&from_dir), stdout(&from_tar)),
        tree,
        table: (stdout(&table), stderr(&table)),
        json: stdout(&json_run),
        get: get.stdout,
        get_tree: listing(&tree_dir),
        log: (stdout(&log), stderr(&log)),
        show: stdout(&show),
        images: stdout(&images),
        no_such_job: stderr(&no_such_job),
        no_such_output: stderr(&no_such_output),
        blob_tree: listing(&blob_dir),
    }
}

fn write_inputs(home: &Home) {
    use std::os::unix::fs::PermissionsExt;
    make_busybox_rootfs(&home.path().join("rootfs"));
    home.write("in.txt", "hello from a file: input\n");
    home.write("dag.json", DAG);
    let data = home.path().join("data");
    std::fs::create_dir_all(data.join("sub/empty")).unwrap();
    std::fs::write(data.join("sub/tool"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(data.join("sub/tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(data.join("sub/empty"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(data.join("big"), vec![7u8; 3 << 20]).unwrap();
    std::fs::hard_link(data.join("big"), data.join("big-again")).unwrap();
    std::os::unix::fs::symlink("../in.txt", data.join("link")).unwrap();
    std::os::unix::fs::symlink("x".repeat(150), data.join("long-link")).unwrap();
    let deep = data.join("n".repeat(120));
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("m".repeat(120)), "deep\n").unwrap();
}

#[test]
fn commands_on_a_held_home_go_through_its_node_with_the_same_output() {
    let tmp = Home::empty();
    let key = mesh_key(tmp.path());
    let mut node = MeshNode::start(Home::empty(), &key, &[], &[]);
    write_inputs(&node.home);
    let through_node = session(&node.home, "node");

    // Job b's input could not be read: the job fails with the reason, the others run.
    let v: serde_json::Value = serde_json::from_str(&through_node.json).unwrap();
    let b = v["jobs"].as_array().unwrap().iter().find(|j| j["job"] == "b").unwrap();
    assert!(b["error"].as_str().unwrap().contains("cannot read the input file missing.txt"), "{b}");
    assert!(String::from_utf8_lossy(&through_node.get).contains("hello from a file: input"));
    assert!(through_node.log.1.contains("to-stderr"));
    assert!(through_node.no_such_job.contains("no run of a job `nosuchjob` is recorded here"));
    // One node per home, and a run of this home's store is not offered to the mesh from here.
    let second = node.home.shoal(&["node", "--http", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    assert!(stderr(&second).contains("is held by the node at"), "{}", stderr(&second));
    let join = node.home.shoal(&["run", "dag.json", "--join", "/ip4/127.0.0.1/tcp/1"]);
    assert!(stderr(&join).contains("shoal submit DAG --wait"), "{}", stderr(&join));

    // kill -9: the node's `node.json` stays behind, naming a port nobody answers on.
    node.kill();
    assert!(node.home.store().join("node.json").exists());
    let direct = session(&node.home, "direct");
    assert_eq!(through_node, direct, "the same commands print the same through the node and directly");
    let v: serde_json::Value = serde_json::from_str(&direct.json).unwrap();
    assert!(v["jobs"].as_array().unwrap().iter().filter(|j| j["job"] != "b").all(|j| j["cached"] == true));
}

#[test]
fn an_upload_past_the_nodes_limit_is_refused_and_leaves_nothing() {
    let tmp = Home::empty();
    let key = mesh_key(tmp.path());
    let node = MeshNode::start(Home::empty(), &key, &[], &["--local-upload-bytes-max", "1KiB"]);
    let big = node.home.write("big.bin", &"x".repeat(4096));
    let out = node.home.shoal(&["blob", "put", big.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("at most 1024 bytes") && stderr(&out).contains("--local-upload-bytes-max"));
    let small = node.home.write("small.bin", "small");
    let put = node.home.shoal(&["blob", "put", small.to_str().unwrap(), "--json"]);
    assert_success(&put, "a small upload");
    // Nothing of the refused one: no temporary file, no blob.
    let tmp_files: Vec<_> = std::fs::read_dir(node.home.store().join("tmp")).unwrap().flatten().collect();
    assert!(tmp_files.is_empty(), "{tmp_files:?}");
    let ls = node.home.shoal(&["blob", "ls", "--json"]);
    let sizes: Vec<u64> = json(&ls).as_array().unwrap().iter().map(|b| b["size"].as_u64().unwrap()).collect();
    assert!(!sizes.contains(&4096), "{sizes:?}");
    assert!(sizes.contains(&5), "{sizes:?}");
}

/// The shell block after `marker` in README.md.
pub fn readme_block(marker: &str) -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let after = &readme[readme.find(marker).unwrap_or_else(|| panic!("README.md has no `{marker}`"))..];
    let start = after.find("```sh\n").expect("a sh block after the marker") + "```sh\n".len();
    let len = after[start..].find("```").expect("the block's end");
    after[start..start + len].to_string()
}

fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }
}

/// `text` with `from` replaced by `to`, which must occur.
pub fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the README's example no longer holds `{from}`:\n{text}");
    text.replace(from, to)
}

/// Signals every process of the group `pgid`; whether any was there.
fn signal_group(pgid: u32, signal: libc::c_int) -> bool {
    // SAFETY: kill has no memory preconditions; a negative pid names the group we created.
    unsafe { libc::kill(-(pgid as libc::pid_t), signal) == 0 }
}

#[test]
fn readme_three_nodes_on_one_machine_runs_as_written() {
    // The mesh-wide cache's example continues it, in the same shell.
    let block = readme_block("Three nodes on one machine") + &readme_block("### One cache for the whole mesh");
    let tmp = Home::empty();
    let rootfs = tmp.path().join("rootfs");
    make_busybox_rootfs(&rootfs);
    // Adapted for this test only where it must be: its own directory for /tmp/, free ports for
    // node 1's defaults (other tests and nodes share this machine), and a ROOTFS.
    let (http, p2p, blobs) = (free_port(false), free_port(false), free_port(true));
    let script = replace(
        &block,
        "shoal node --mesh-key /tmp/mesh.key &",
        &format!(
            "shoal node --mesh-key /tmp/mesh.key --listen /ip4/127.0.0.1/tcp/{p2p} --http 127.0.0.1:{http} \
             --blobs 127.0.0.1:{blobs} &"
        ),
    );
    let script = replace(&script, "127.0.0.1:7170", &format!("127.0.0.1:{http}"));
    let script = replace(&script, "/tmp/", &format!("{}/", tmp.path().display()));
    let script = replace(&script, "ROOTFS", rootfs.to_str().unwrap());
    let bin_dir: PathBuf = shoal_bin().parent().unwrap().to_path_buf();
    let full = format!("set -euxo pipefail\nexport PATH={}:$PATH\n{script}", bin_dir.display());
    let (out_path, err_path) = (tmp.path().join("stdout"), tmp.path().join("stderr"));
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(&full)
        .current_dir(repo_root())
        .env_remove("SHOAL_HOME")
        .env_remove("SHOAL_NODE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    // Its own process group: the nodes and `shoal watch` it leaves in the background are stopped
    // with it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().expect("bash");
    let pgid = child.id();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > README_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // SIGTERM: the nodes stop cleanly (their QEMUs die with them).
    signal_group(pgid, libc::SIGTERM);
    let stopping = Instant::now();
    while signal_group(pgid, 0) && stopping.elapsed() < STOP_TIMEOUT {
        std::thread::sleep(Duration::from_millis(100));
    }
    signal_group(pgid, libc::SIGKILL);
    let _ = child.wait();
    let (out, err) = (std::fs::read_to_string(&out_path).unwrap(), std::fs::read_to_string(&err_path).unwrap());
    let status =
        status.unwrap_or_else(|| panic!("the README's example did not end in {README_TIMEOUT:?}:\n{out}\n{err}"));
    assert!(status.success(), "the README's example failed ({status}):\nstdout:\n{out}\nstderr:\n{err}");
    for line in ["lines and words: 200 2200", "parts: part-1 part-2 part-3 part-4", "vowel e: 800"] {
        assert!(out.contains(line), "`{line}` not in the report:\n{out}\nstderr:\n{err}");
    }
    // The edited DAG: `count` ran again (characters now), `report` with it; node 2 ran the
    // others' results again and found them equal.
    assert!(out.contains("lines and words: 200 10692"), "the edited count in the report:\n{out}");
    assert!(out.contains("agrees") && !out.contains("differs"), "verify agrees:\n{out}");
    // `shoal watch` in the background followed the mesh. It shows events from when it connected,
    // which a loaded machine may put after the first claims, but before the DAG's last job ended
    // (the submit waits for that): so its line for `report` is there.
    assert!(out.contains("done       report"), "`shoal watch` saw no end of `report`:\n{out}");
}

#[test]
fn a_held_home_whose_node_wants_tokens_is_used_with_shoal_token() {
    let tmp = Home::empty();
    let key = mesh_key(tmp.path());
    let node = MeshNode::start(Home::empty(), &key, &[], &["--http-auth"]);
    let created = node.home.shoal(&["token", "create", "--name", "me", "--scope", "admin"]);
    assert_success(&created, "shoal token create");
    let secret = stdout(&created).trim().to_string();
    let file = node.home.write("f.txt", "through a node that wants tokens\n");
    let put = |token: Option<&str>| {
        let mut cmd = Command::new(shoal_bin());
        cmd.args(["blob", "put", file.to_str().unwrap()])
            .env("SHOAL_HOME", node.home.store())
            .env_remove("SHOAL_TOKEN")
            .env_remove("RUST_LOG");
        if let Some(t) = token {
            cmd.env("SHOAL_TOKEN", t);
        }
        run_with_deadline(cmd)
    };
    let refused = put(None);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).to_lowercase().contains("token"), "{}", stderr(&refused));
    let stored = put(Some(&secret));
    assert_success(&stored, "blob put with $SHOAL_TOKEN");
    assert!(stdout(&stored).starts_with("blake3:"));
}

/// Regression: `/v1/local/ready` answered before its body arrived and left it unread, so hyper
/// closed the connection, and the CLI's upload that followed on it (ureq keeps connections) failed
/// with "Peer disconnected" on a loaded machine. Here the body comes late, on purpose.
#[test]
fn a_keep_alive_connection_survives_a_ready_whose_body_comes_late() {
    use std::io::{Read, Write};
    let tmp = Home::empty();
    let key = mesh_key(tmp.path());
    let node = MeshNode::start(Home::empty(), &key, &[], &[]);
    let addr = node.http.trim_start_matches("http://").trim_end_matches('/').to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /v1/local/ready HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"{}").unwrap();
    let first = read_reply(&mut s);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // The same connection takes the next request.
    s.write_all(format!("GET /v1/health HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).unwrap();
    let second = read_reply(&mut s);
    assert!(second.starts_with("HTTP/1.1 200"), "the node closed the connection after a ready: {second:?}");

    /// One reply with a Content-Length body, or what came before the connection closed.
    fn read_reply(s: &mut std::net::TcpStream) -> String {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if bytes.len() >= end + 4 + len {
                    return String::from_utf8_lossy(&bytes[..end + 4 + len]).into_owned();
                }
            }
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&bytes).into_owned(),
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    }
}
