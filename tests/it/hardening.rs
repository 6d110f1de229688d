//! Issue 16's defects, each as a user met it: the real binary, the namespace backend, a fresh store.

use crate::support::*;

fn run_ns(home: &Home, dag: &std::path::Path) -> std::process::Output {
    home.shoal(&["run", "--backend", "namespace", dag.to_str().unwrap(), "--json"])
}

/// Run records over ciborium's 4 KiB scratch buffer were stored, then unreadable: `get`, `log`,
/// `show`, a rerun and `gc` of the whole store failed ("invalid type: bytes, expected bytes").
#[test]
fn big_run_records_stay_readable_and_gc_works() {
    let home = Home::with_busybox();
    let long_arg = "a".repeat(5000);
    let long_env = "e".repeat(4100);
    let outputs: serde_json::Map<String, serde_json::Value> =
        (0..60).map(|i| (format!("f{i}"), format!("file:/output/f{i}").into())).collect();
    let dag = serde_json::json!({"version": 1, "jobs": [
        {"id": "arg", "image": "busybox:latest", "command": ["sh", "-c", "echo ${#1}", "sh", long_arg],
         "outputs": {"o": "stdout"}},
        {"id": "env", "image": "busybox:latest", "command": ["sh", "-c", "echo ${#LONG}"],
         "env": {"LONG": long_env}, "outputs": {"o": "stdout"}},
        {"id": "many", "image": "busybox:latest",
         "command": ["sh", "-c", "for i in $(seq 0 59); do echo $i > /output/f$i; done; echo many"],
         "outputs": outputs},
        {"id": "fails", "image": "busybox:latest",
         "command": ["sh", "-c", "head -c 6000 /dev/zero | tr '\\0' x >&2; exit 3"], "outputs": {"o": "stdout"}}
    ]});
    let path = home.write("big.json", &dag.to_string());
    let first = run_ns(&home, &path);
    let report = json(&first);
    assert_eq!(report["jobs"].as_array().unwrap().len(), 4, "{report}");

    assert_eq!(stdout(&home.shoal(&["get", "arg", "o"])), "5000\n");
    assert_eq!(stdout(&home.shoal(&["get", "env", "o"])), "4100\n");
    assert_eq!(stdout(&home.shoal(&["get", "many", "f59"])), "59\n");
    for job in ["arg", "env", "many", "fails"] {
        let show = home.shoal(&["show", job]);
        assert_success(&show, &format!("shoal show {job}"));
        assert_eq!(json(&show)["job_id"], job);
        let log = home.shoal(&["log", job]);
        assert!(log.status.success() || job == "fails", "shoal log {job}: {}", stderr(&log));
    }
    assert_eq!(stderr(&home.shoal(&["log", "fails"])).len(), 6000);

    // A rerun answers the three good jobs from the cache; gc keeps them.
    let again = json(&run_ns(&home, &path));
    for j in again["jobs"].as_array().unwrap() {
        assert_eq!(j["cached"], j["job"] != "fails", "{j}");
    }
    assert_success(&home.shoal(&["gc"]), "gc");
    assert_eq!(stdout(&home.shoal(&["get", "many", "f0"])), "0\n");
}

/// Flips one byte of a blob's data file in a store (blobs over 16 KiB have one).
fn corrupt_blob(home: &Home, hash: &str) {
    let hex = hash.trim().strip_prefix("blake3:").unwrap_or(hash.trim());
    let path = home.store().join("blobs/data").join(format!("{hex}.data"));
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes[100] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
}

/// A corrupted blob was served as if it were fine by `shoal get`, `shoal blob get` and as a job's
/// input, and the job's different output was recorded under the same action key.
#[test]
fn a_corrupted_blob_is_never_served() {
    let home = Home::with_busybox();
    let data: String = (0..5000).map(|i| format!("{i}\n")).collect();
    let file = home.write("data.txt", &data);
    let put = home.shoal(&["blob", "put", file.to_str().unwrap()]);
    assert_success(&put, "blob put");
    let hash = stdout(&put).trim().to_string();
    let dag = home.write(
        "count.json",
        &format!(
            r#"{{"version": 1, "jobs": [{{"id": "copy", "image": "busybox:latest",
            "command": ["sh", "-c", "cat /input/data; echo end"], "inputs": {{"data": "{hash}"}}, "outputs": {{"o": "stdout"}}}}]}}"#
        ),
    );
    assert_success(&run_ns(&home, &dag), "first run");
    let out_hash = json(&home.shoal(&["show", "copy"]))["outputs"]["o"]["hash"].as_str().unwrap().to_string();
    corrupt_blob(&home, &hash);
    corrupt_blob(&home, &out_hash);

    for args in [vec!["blob", "get", hash.as_str()], vec!["get", "copy", "o"]] {
        let out = home.shoal(&args);
        assert!(!out.status.success(), "shoal {args:?} served a corrupted blob");
        assert!(stderr(&out).contains("corrupted"), "shoal {args:?}: {}", stderr(&out));
    }
    let dest = home.path().join("o.txt");
    let out = home.shoal(&["get", "copy", "o", "-o", dest.to_str().unwrap()]);
    assert!(!out.status.success() && !dest.exists(), "get -o wrote a corrupted blob");

    // A job reading the corrupted input fails and names it; nothing enters the cache.
    let dag2 = home.write(
        "count2.json",
        &format!(
            r#"{{"version": 1, "jobs": [{{"id": "wc", "image": "busybox:latest",
            "command": ["wc", "-c", "/input/data"], "inputs": {{"data": "{hash}"}}, "outputs": {{"o": "stdout"}}}}]}}"#
        ),
    );
    let run = run_ns(&home, &dag2);
    assert!(!run.status.success(), "a job ran on a corrupted input");
    let text = format!("{}{}", stdout(&run), stderr(&run));
    assert!(text.contains("corrupted") && text.contains(hash.trim_start_matches("blake3:")), "{text}");

    // Stored again, it is whole and in use; the job runs and is cached.
    assert_success(&home.shoal(&["blob", "put", file.to_str().unwrap()]), "blob put again");
    assert_eq!(stdout(&home.shoal(&["blob", "get", &hash])), data);
    let again = json(&run_ns(&home, &dag2));
    assert_eq!(again["jobs"][0]["status"], "done", "{again}");
}

/// A tmpfs of `mib` MiB mounted at `dir` for one test (needs root, as CI is), unmounted on drop.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: &std::path::Path, mib: u32) -> SmallFs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs", dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "mounting a tmpfs needs root (CI runs as root): {}", stderr(&out));
        SmallFs(dir.to_owned())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A store on a full file system failed with `output tar: failed to unpack` and no word of
/// space; what is already stored must stay intact and the store must open cleanly afterwards.
#[test]
fn a_full_disk_is_named_and_loses_nothing() {
    let home = Home::empty();
    let _fs = SmallFs::mount(&home.store(), 24);
    let rootfs = home.path().join("rootfs");
    make_busybox_rootfs(&rootfs);
    let build = home.shoal(&["image", "build", rootfs.to_str().unwrap(), "--tag", "bb:1", "--env", "PATH=/bin"]);
    assert_success(&build, "image build");
    let dag = |name: &str, script: &str| {
        home.write(
            name,
            &serde_json::json!({"version": 1, "jobs": [{"id": name.trim_end_matches(".json"), "image": "bb:1",
                "command": ["sh", "-c", script], "outputs": {"x": "file:/output/x"}}]})
            .to_string(),
        )
    };
    let small = dag("small.json", "echo kept > /output/x");
    assert_success(&run_ns(&home, &small), "small job");

    // Outputs larger than the free space: the job fails and the error says why.
    let big = dag("big.json", "head -c 40000000 /dev/zero > /output/x");
    let out = run_ns(&home, &big);
    assert!(!out.status.success());
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("no space left") || text.contains("is full"), "{text}");
    assert!(text.contains(home.store().to_str().unwrap()), "the error does not name the store's file system: {text}");

    // An import larger than the free space.
    let file = home.path().join("big.bin");
    std::fs::write(&file, vec![7u8; 30 << 20]).unwrap();
    let put = home.shoal(&["blob", "put", file.to_str().unwrap()]);
    assert!(!put.status.success());
    assert!(
        stderr(&put).contains("bytes free") && stderr(&put).contains(home.store().to_str().unwrap()),
        "{}",
        stderr(&put)
    );

    // Everything stored before is intact, and the store works once space is back.
    assert_eq!(stdout(&home.shoal(&["get", "small", "x"])), "kept\n");
    assert_success(&home.shoal(&["image", "ls"]), "image ls");
    let again = json(&run_ns(&home, &small));
    assert_eq!(again["jobs"][0]["cached"], true, "{again}");
    let other = dag("other.json", "echo new > /output/x");
    assert_success(&run_ns(&home, &other), "a job after the full disk");
    assert_eq!(stdout(&home.shoal(&["get", "other", "x"])), "new\n");
}

/// `file:/dev/zero` hung and wrote gigabytes into the store's temp directory, left behind after a
/// kill. Inputs must be regular files or directories, and an interrupted import's temp files go
/// at the next start.
#[test]
fn file_inputs_that_never_end_are_refused() {
    let home = Home::with_busybox();
    let fifo = home.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for (path, kind) in [("/dev/zero", "character device"), (fifo.to_str().unwrap(), "FIFO")] {
        let dag = home.write(
            "zero.json",
            &serde_json::json!({"version": 1, "jobs": [{"id": "z", "image": "busybox:latest",
                "command": ["true"], "inputs": {"z": format!("file:{path}")}, "outputs": {"o": "stdout"}}]})
            .to_string(),
        );
        let out = run_ns(&home, &dag);
        assert!(!out.status.success());
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(text.contains(path) && text.contains(kind) && text.contains("regular file"), "{text}");
        let put = home.shoal(&["blob", "put", path]);
        assert!(!put.status.success() && stderr(&put).contains(kind), "{}", stderr(&put));
    }
    // What a killed import leaves (ours and iroh-blobs') is gone at the next start.
    let leftovers = [home.store().join("tmp/upload-x"), home.store().join("blobs/temp/import-x")];
    for p in &leftovers {
        std::fs::write(p, vec![0u8; 1 << 20]).unwrap();
    }
    assert_success(&home.shoal(&["blob", "ls"]), "blob ls");
    for p in &leftovers {
        assert!(!p.exists(), "{} survived the next start", p.display());
    }
}

/// A FIFO or socket written under a `dir:` output vanished: the job was `done` with an empty
/// tree. It must fail and name the path.
#[test]
fn special_files_in_outputs_are_refused_by_name() {
    let home = Home::with_busybox();
    let dag = home.write(
        "fifo.json",
        r#"{"version": 1, "jobs": [
            {"id": "d", "image": "busybox:latest", "command": ["sh", "-c", "mkdir -p /output/d/sub; echo x > /output/d/a; mkfifo /output/d/sub/pipe"],
             "outputs": {"tree": "dir:/output/d"}},
            {"id": "g", "image": "busybox:latest", "command": ["sh", "-c", "mkdir -p /output/g; mkfifo /output/g/p.txt; echo y > /output/g/q.txt"],
             "outputs": {"txt": "glob:/output/g/*.txt"}},
            {"id": "fine", "image": "busybox:latest", "command": ["sh", "-c", "mkdir -p /output/h; mkfifo /output/h/p.log; echo z > /output/h/q.txt"],
             "outputs": {"txt": "glob:/output/h/*.txt"}}
        ]}"#,
    );
    let report = json(&run_ns(&home, &dag));
    let job = |id: &str| report["jobs"].as_array().unwrap().iter().find(|j| j["job"] == id).unwrap().clone();
    for (id, path) in [("d", "/output/d/sub/pipe"), ("g", "/output/g/p.txt")] {
        let j = job(id);
        assert_eq!(j["status"], "failed", "{j}");
        let log = format!("{}", j);
        assert!(log.contains(path) && log.contains("FIFO"), "{id}: {j}");
    }
    // A FIFO the glob does not select is no concern of the output.
    assert_eq!(job("fine")["status"], "done", "{}", job("fine"));
}

/// `ln -s / x` under an output came back as a link to `//`.
#[test]
fn a_symlink_to_the_root_comes_back_as_written() {
    let home = Home::with_busybox();
    let dag = home.write(
        "ln.json",
        r#"{"version": 1, "jobs": [{"id": "ln", "image": "busybox:latest",
            "command": ["sh", "-c", "mkdir -p /output/d; ln -s / /output/d/root; ln -s /etc/ /output/d/etc; ln -s a//b /output/d/ab"],
            "outputs": {"tree": "dir:/output/d"}}]}"#,
    );
    assert_success(&run_ns(&home, &dag), "run");
    let dest = home.path().join("got");
    assert_success(&home.shoal(&["get", "ln", "tree", "-o", dest.to_str().unwrap()]), "get");
    for (name, target) in [("root", "/"), ("etc", "/etc/"), ("ab", "a//b")] {
        assert_eq!(std::fs::read_link(dest.join(name)).unwrap().to_str().unwrap(), target, "{name}");
    }
}

/// A fork bomb was bounded only by the host's pid_max: a job now has at most `pids` processes
/// and threads (1024 by default).
#[test]
fn processes_are_limited_by_the_pids_requirement() {
    let home = Home::with_busybox();
    // The forks run in a subshell (busybox sh exits when a fork fails); the count uses the shell's
    // own globbing, since at the limit nothing more can be forked.
    let script = "(i=0; while [ $i -lt 300 ]; do sleep 5 & i=$((i+1)); done) 2>/dev/null; \
                  set -- /proc/[0-9]*; echo $#";
    let dag = home.write(
        "bomb.json",
        &serde_json::json!({"version": 1, "jobs": [
            {"id": "bounded", "image": "busybox:latest", "command": ["sh", "-c", script],
             "requirements": {"pids": 40, "timeout": "60s"}, "outputs": {"n": "stdout"}},
            {"id": "default", "image": "busybox:latest", "command": ["sh", "-c", script],
             "requirements": {"timeout": "60s"}, "outputs": {"n": "stdout"}}
        ]})
        .to_string(),
    );
    let out = run_ns(&home, &dag);
    assert_success(&out, "run");
    let n = |job: &str| stdout(&home.shoal(&["get", job, "n"])).trim().parse::<u32>().unwrap();
    assert!(n("bounded") <= 40, "{} processes ran under pids: 40", n("bounded"));
    assert!(n("default") > 300, "the default limit (1024) stopped 300 sleeps: {}", n("default"));
    assert_eq!(json(&home.shoal(&["show", "bounded"]))["requirements"]["pids_max"], 40);
}

/// Invalid UTF-8 in a DAG file was reported without a location; control characters and
/// bidirectional overrides from a DAG were echoed raw into the terminal; a DAG file had no size
/// limit (200 MB took 1.5 GB to parse).
#[test]
fn dag_files_are_read_carefully() {
    let home = Home::with_busybox();
    let bad = home.path().join("latin1.json");
    std::fs::write(&bad, b"{\"version\": 1,\n \"jobs\": [{\"id\": \"caf\xe9\"}]}").unwrap();
    let out = home.shoal(&["run", "--backend", "namespace", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("latin1.json:2:22") && stderr(&out).contains("not UTF-8"), "{}", stderr(&out));

    let evil = home.write(
        "evil.json",
        "{\"version\": 1, \"jobs\": [{\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"], \
         \"x\\u001b[2J\\u202egnp.exe\": 1}]}",
    );
    let out = home.shoal(&["run", "--backend", "namespace", evil.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        !err.contains('\u{1b}') && !err.contains('\u{202e}'),
        "raw control characters reached the terminal: {err:?}"
    );
    assert!(err.contains("\\u{1b}") && err.contains("\\u{202e}"), "{err}");

    let big = home.path().join("big.json");
    std::fs::write(&big, format!("{{\"version\": 1, \"jobs\": [], \"pad\": \"{}\"}}", "x".repeat(2 << 20))).unwrap();
    let out = home.shoal(&["run", "--backend", "namespace", "--dag-size-max", "1MiB", big.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("at most 1048576 bytes") && stderr(&out).contains("--dag-size-max"),
        "{}",
        stderr(&out)
    );
}

/// `scripts/setup.sh` failed with `strip: … Text file busy` while any job in the same checkout
/// was running (guest-init is the namespace backend's helper).
#[test]
fn guest_init_can_be_rebuilt_while_a_job_runs() {
    let home = Home::with_busybox();
    let dag = home.write(
        "sleep.json",
        r#"{"version": 1, "jobs": [{"id": "s", "image": "busybox:latest", "command": ["sleep", "8"], "outputs": {"o": "stdout"}}]}"#,
    );
    let mut job = std::process::Command::new(shoal_bin())
        .args(["run", "--backend", "namespace", dag.to_str().unwrap()])
        .env("SHOAL_HOME", home.store())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let helper = repo_root().join("target/x86_64-unknown-linux-gnu/release/shoal-guest-init");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let busy = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .any(|p| std::fs::read_link(p.path().join("exe")).is_ok_and(|exe| exe == helper))
    };
    while !busy() {
        assert!(std::time::Instant::now() < deadline, "the job's sandbox helper never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // As after a build that changed it: cargo hard-links the program from deps/, and strip then
    // writes into the linked (running) file instead of renaming a new one over it.
    let link = helper.with_file_name(format!(".shoal-test-link-{}", std::process::id()));
    std::fs::hard_link(&helper, &link).unwrap();
    let mut cmd = std::process::Command::new(repo_root().join("scripts/build-guest-init.sh"));
    cmd.env("CARGO_QUIET", "1");
    let out = run_with_deadline(cmd);
    let _ = std::fs::remove_file(&link);
    let _ = job.kill();
    let _ = job.wait();
    assert_success(&out, "scripts/build-guest-init.sh while guest-init runs");
}

/// `POST /v1/blobs` took up to a fixed 4 GiB with no setting; a DAG body had a fixed limit.
#[test]
fn a_node_s_upload_and_dag_limits_are_settable() {
    use crate::mesh::{MeshNode, mesh_key};
    let home = Home::with_busybox();
    let key = mesh_key(home.path());
    let node = MeshNode::start(home, &key, &[], &["--upload-size-max", "64KiB", "--dag-size-max", "4KiB"]);
    let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
    let post = |path: &str, ct: &str, body: Vec<u8>| {
        let mut r = agent.post(format!("{}{path}", node.http)).header("Content-Type", ct).send(&body[..]).unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default())
    };
    let (status, body) = post("/v1/blobs", "application/octet-stream", vec![1u8; 64 << 10]);
    assert_eq!(status, 201, "{body}");
    // One byte over, announced with `Expect: 100-continue` as curl does for large bodies: the
    // refusal comes before any of the body is sent (a client still sending when a refusal
    // closes the connection sees only the reset).
    let addr = node.http.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    write!(
        conn,
        "POST /v1/blobs HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        (64 << 10) + 1
    )
    .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("--upload-size-max"), "{reply}");
    let dag = format!("{{\"version\": 1, \"jobs\": [], \"x\": \"{}\"}}", "a".repeat(5000));
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /v1/dags HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{dag}",
        dag.len()
    )
    .unwrap();
    let mut reply = String::new();
    let _ = conn.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
}

// ---------------------------------------------------------------------------------------------
// A store that cannot be opened (issue 16, "Proving it: Faults"): each damage as a user meets it,
// with the real binary: exit 2, no panic, a message naming the path and what to do, and the
// advice, followed, gives a store that opens.

/// Runs `shoal args` on `home` and checks it refused to open the store as a user should see it:
/// exit 2, no panic text, every one of `needles` in the message. Returns the message.
fn refused(home: &Home, args: &[&str], needles: &[&str]) -> String {
    let out = home.shoal(args);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "shoal {args:?}: {:?}\n{text}", out.status);
    assert!(!text.contains("panicked") && !text.contains("RUST_BACKTRACE"), "shoal {args:?} panicked:\n{text}");
    for needle in needles {
        assert!(text.contains(needle), "shoal {args:?}: the message lacks `{needle}`:\n{text}");
    }
    text
}

/// A home with an image and one run in it (so both databases have tables and pages).
fn used_home() -> Home {
    let home = Home::with_busybox();
    let dag = home.write(
        "one.json",
        r#"{"version": 1, "jobs": [{"id": "one", "image": "busybox:latest", "command": ["echo", "one"],
            "outputs": {"o": "stdout"}}]}"#,
    );
    assert_success(&run_ns(&home, &dag), "a first run");
    home
}

/// The sled metadata database overwritten with garbage, or damaged at its start: named, with the
/// command that moves it aside; done, the store opens again (empty metadata, blobs kept).
#[test]
fn a_damaged_metadata_database_is_named_with_the_fix() {
    type Damage = fn(&std::path::Path);
    let damages: [(&str, Damage); 3] = [
        ("garbage", |db| std::fs::write(db, vec![0xa5u8; std::fs::metadata(db).unwrap().len() as usize]).unwrap()),
        ("a flipped header", |db| {
            let mut bytes = std::fs::read(db).unwrap();
            for b in &mut bytes[100..108] {
                *b ^= 0xff;
            }
            std::fs::write(db, bytes).unwrap();
        }),
        ("emptied", |db| std::fs::write(db, b"").unwrap()),
    ];
    for (what, damage) in damages {
        let home = used_home();
        let meta = home.store().join("meta");
        damage(&meta.join("db"));
        let path = meta.to_str().unwrap();
        for args in [&["image", "ls"][..], &["get", "one", "o"], &["gc"]] {
            let text = refused(&home, args, &[path, "damaged", "mv "]);
            assert!(text.contains(&format!("{path}.damaged")), "{what}: {text}");
        }
        std::fs::rename(&meta, home.store().join("meta.damaged")).unwrap();
        assert_success(&home.shoal(&["blob", "ls"]), &format!("{what}: blob ls after moving meta aside"));
    }

    // A file where the database's directory belongs.
    let home = used_home();
    let meta = home.store().join("meta");
    std::fs::remove_dir_all(&meta).unwrap();
    std::fs::write(&meta, "not a directory").unwrap();
    refused(&home, &["image", "ls"], &[meta.to_str().unwrap(), "not a directory", "mv "]);
}

/// iroh-blobs' redb database damaged: not a database, truncated, pages overwritten (redb panics
/// on those in a thread of iroh-blobs' runtime: the panic must not reach the user), a directory.
#[test]
fn a_damaged_blob_database_is_named_with_the_fix() {
    type Damage = fn(&std::path::Path);
    let damages: [(&str, Damage); 4] = [
        ("garbage", |db| std::fs::write(db, vec![0x5au8; 64 << 10]).unwrap()),
        ("truncated", |db| {
            let f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
            f.set_len(1000).unwrap();
        }),
        ("pages overwritten", |db| {
            // The first byte of every page after the header is its type.
            let mut bytes = std::fs::read(db).unwrap();
            for page in (4096..bytes.len()).step_by(4096) {
                bytes[page] = 0xff;
            }
            std::fs::write(db, bytes).unwrap();
        }),
        ("a directory", |db| {
            std::fs::remove_file(db).unwrap();
            std::fs::create_dir(db).unwrap();
        }),
    ];
    for (what, damage) in damages {
        let home = used_home();
        let blobs = home.store().join("blobs");
        damage(&blobs.join("blobs.db"));
        let path = blobs.to_str().unwrap();
        for args in [&["image", "ls"][..], &["blob", "ls"]] {
            let text = refused(&home, args, &[path, "damaged", "mv "]);
            assert!(text.contains(&format!("{path}.damaged")), "{what}: {text}");
        }
        std::fs::rename(&blobs, home.store().join("blobs.damaged")).unwrap();
        assert_success(&home.shoal(&["blob", "ls"]), &format!("{what}: blob ls after moving blobs aside"));
    }
}

/// A store this user may not read or write (the test runs shoal as `nobody`, so it needs root,
/// as CI has): the message names the very file and says to chown or chmod it.
#[test]
fn an_unreadable_store_names_the_file_and_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let home = used_home();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let chown = std::process::Command::new("chown").args(["-R", "nobody"]).arg(home.store()).output().unwrap();
    assert!(chown.status.success(), "chown needs root (CI runs as root): {}", stderr(&chown));
    let as_nobody = |args: &[&str]| {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(shoal_bin())
            .args(args)
            .env("SHOAL_HOME", home.store())
            .env_remove("RUST_LOG")
            .current_dir("/");
        run_with_deadline(cmd)
    };
    assert_success(&as_nobody(&["image", "ls"]), "image ls as the store's owner");
    for rel in ["meta", "meta/db", "blobs", "blobs/blobs.db"] {
        let path = home.store().join(rel);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        let out = as_nobody(&["image", "ls"]);
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{rel}: {text}");
        assert!(!text.contains("panicked"), "{rel}: {text}");
        assert!(
            text.contains(&format!("{} ", path.display())) || text.contains(&format!("{}:", path.display())),
            "{rel}: {text}"
        );
        assert!(text.contains("chown or chmod"), "{rel}: {text}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// Two `shoal run` at once on one home: the second named neither the process nor what to do
/// (sled's "could not acquire lock ... WouldBlock").
#[test]
fn a_store_in_use_names_the_process_holding_it() {
    let home = used_home();
    let slow = home.write(
        "slow.json",
        r#"{"version": 1, "jobs": [{"id": "slow", "image": "busybox:latest", "command": ["sleep", "100"],
            "requirements": {"timeout": "110s"}, "outputs": {"o": "stdout"}}]}"#,
    );
    let mut first = std::process::Command::new(shoal_bin())
        .args(["run", "--backend", "namespace", slow.to_str().unwrap()])
        .env("SHOAL_HOME", home.store())
        .env_remove("RUST_LOG")
        .current_dir(home.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct KillOnDrop<'a>(&'a mut std::process::Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = first.id();
    let _guard = KillOnDrop(&mut first);
    // Waits (with a deadline) until the first run holds the store's lock, as /proc/locks says.
    let started = std::time::Instant::now();
    while !std::fs::read_to_string("/proc/locks").unwrap().lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) != Some(&"->") && f.get(4) == Some(&pid.to_string().as_str())
    }) {
        assert!(started.elapsed() < COMMAND_TIMEOUT, "the first shoal run never locked its store");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let one = home.path().join("one.json");
    let store = home.store();
    for args in [&["run", "--backend", "namespace", one.to_str().unwrap()][..], &["image", "ls"]] {
        refused(
            &home,
            args,
            &[store.to_str().unwrap(), "in use by", &format!("process {pid}"), "shoal run", &format!("kill {pid}")],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Found by bench/soak.py (issue 16, "Proving it: Load and soak").

/// A byte flipped in a node's copy of an output: the first read through the API found the
/// corruption and answered 500, although the other node held the output whole. It must fetch the
/// output again from that peer and answer with the right bytes (outputs and `/v1/blobs`).
#[test]
fn a_corrupted_copy_is_fetched_again_from_a_peer_on_read() {
    use crate::mesh::{MeshNode, mesh_key, wait_dag, wait_for_mesh};
    let first = Home::with_busybox();
    let key = mesh_key(first.path());
    let n0 = MeshNode::start(first, &key, &[], &[]);
    let n1 = MeshNode::start(Home::empty(), &key, &[&n0.listen], &[]);
    wait_for_mesh(&[&n0, &n1]);
    // Over iroh-blobs' 16 KiB inline size, so the output has a data file to corrupt.
    let dag = n0.home.write(
        "gen.json",
        r#"{"version": 1, "jobs": [{"id": "gen", "image": "busybox:latest", "command": ["seq", "1", "9000"],
            "outputs": {"o": "stdout"}}]}"#,
    );
    let out = n0.cli(&["submit", dag.to_str().unwrap()]);
    assert_success(&out, "submit");
    let dag = stdout(&out).trim().to_string();
    wait_dag(&n1, &dag, std::time::Duration::from_secs(120), "gen done", |v| v["jobs"]["gen"]["state"] == "done");
    let want: String = (1..=9000).map(|i| format!("{i}\n")).collect();
    let path = format!("/v1/dags/{dag}/jobs/gen/outputs/o");
    // What came back, short: the status, and the body if it is not the output.
    let answer = |(status, body): (u16, Vec<u8>)| {
        if body == want.as_bytes() {
            (status, "the output".to_string())
        } else {
            (status, String::from_utf8_lossy(&body[..body.len().min(600)]).into_owned())
        }
    };
    let whole = (200, "the output".to_string());
    // Both nodes hold it once each has served it.
    for n in [&n0, &n1] {
        assert_eq!(answer(n.get(&path)), whole);
    }
    let record = n1.get_json(&format!("/v1/dags/{dag}"))["jobs"]["gen"]["record"].as_str().unwrap().to_string();
    let hash = n1.get_json(&format!("/v1/records/{record}"))["stdout"]["hash"].as_str().unwrap().to_string();
    let flip = |n: &MeshNode| {
        let hex = hash.trim_start_matches("blake3:");
        let file = n.home.store().join("blobs/data").join(format!("{hex}.data"));
        let mut bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        bytes[1000] ^= 0x20;
        std::fs::write(&file, bytes).unwrap();
    };
    flip(&n1);
    assert_eq!(answer(n1.get(&path)), whole, "an output after a flip");
    flip(&n0);
    assert_eq!(answer(n0.get(&format!("/v1/blobs/{hash}"))), whole, "a blob after a flip");
}

/// A job whose completion the mesh reported lost (no node could serve its outputs: here the only
/// copy is corrupted) was claimed by a node whose action cache still named that same record: it
/// "finished" with it at once, which no longer counts, and claimed again, ten times a second, for
/// good; its dependants never ran. The cache must not answer with a record reported lost.
#[test]
fn a_job_whose_record_was_reported_lost_is_run_again_not_answered_from_the_cache() {
    use crate::mesh::{MeshNode, mesh_key, wait_dag, wait_for_mesh};
    let first = Home::with_busybox();
    let key = mesh_key(first.path());
    // One holder per output: the runner.
    let a = MeshNode::start(first, &key, &[], &["--label", "name=a", "--replicas", "1"]);
    let b = MeshNode::start(Home::empty(), &key, &[&a.listen], &["--label", "name=b", "--replicas", "1"]);
    wait_for_mesh(&[&a, &b]);
    let gen_job = serde_json::json!({"id": "gen", "image": "busybox:latest", "command": ["seq", "1", "9000"],
        "requirements": {"labels": {"name": "a"}}, "outputs": {"o": "stdout"}});
    let submit = |name: &str, jobs: serde_json::Value| {
        let path = a.home.write(name, &serde_json::json!({"version": 1, "jobs": jobs}).to_string());
        let out = a.cli(&["submit", path.to_str().unwrap()]);
        assert_success(&out, "submit");
        stdout(&out).trim().to_string()
    };
    let done = |v: &serde_json::Value| v["jobs"].as_object().unwrap().values().all(|j| j["state"] == "done");
    let first = submit("gen.json", serde_json::json!([gen_job]));
    let v = wait_dag(&a, &first, std::time::Duration::from_secs(60), "gen done", done);
    let record = v["jobs"]["gen"]["record"].as_str().unwrap().to_string();
    let hash = a.get_json(&format!("/v1/records/{record}"))["stdout"]["hash"].as_str().unwrap().to_string();
    let file = a.home.store().join("blobs/data").join(format!("{}.data", hash.trim_start_matches("blake3:")));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[1000] ^= 0x20;
    std::fs::write(&file, bytes).unwrap();

    // The same `gen` (a cache hit on a) and a reader of its output that only b may run.
    let second = submit(
        "use.json",
        serde_json::json!([gen_job, {"id": "use", "image": "busybox:latest", "command": ["wc", "-l", "/input/g"],
            "inputs": {"g": "jobs:gen/o"}, "requirements": {"labels": {"name": "b"}}, "outputs": {"o": "stdout"}}]),
    );
    let v = wait_dag(&b, &second, std::time::Duration::from_secs(120), "gen run again, use done", done);
    assert_ne!(v["jobs"]["gen"]["record"].as_str().unwrap(), record, "{v:#}");
    let (status, body) = b.get(&format!("/v1/dags/{second}/jobs/use/outputs/o"));
    assert_eq!((status, String::from_utf8_lossy(&body).trim()), (200, "9000 /input/g"));
}
