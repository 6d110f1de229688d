//! Integration tests of both backends: real sandboxes and real microVMs around a busybox rootfs,
//! with a checker script inside that proves the isolation's properties from the inside. The
//! cases shared by both backends run once per backend (`namespace::*`, `microvm::*`); with
//! `SHOAL_REQUIRE_VM=1` a missing QEMU, kernel or guest-init fails the microvm cases instead of
//! skipping them.

mod microvm_only;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::cell::Cell;
use std::sync::OnceLock;

use shoal_vm::{
    Backend, CollectedOutput, Exit, HelperCommand, InputMount, Limits, MicrovmBackend, MicrovmConfig, NamespaceBackend,
    Outcome, OutputSpec, Request,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Namespace,
    Microvm,
}

thread_local! {
    static KIND: Cell<Kind> = const { Cell::new(Kind::Namespace) };
}

fn backend() -> NamespaceBackend {
    NamespaceBackend::new(HelperCommand::new(env!("CARGO_BIN_EXE_shoal-sandbox")))
}

/// Where the microVM artefacts (vmlinux, initramfs) are cached between test runs.
fn vm_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("shoal-vm-cache")
}

/// The microVM backend, set up once per test process; Err says what is missing.
fn microvm() -> Result<&'static MicrovmBackend, String> {
    static VM: OnceLock<Result<MicrovmBackend, String>> = OnceLock::new();
    VM.get_or_init(|| MicrovmBackend::new(MicrovmConfig::new(vm_cache_dir())).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// Whether the microVM cases can run; without `SHOAL_REQUIRE_VM=1` a missing piece skips them.
fn vm_available() -> bool {
    match microvm() {
        Ok(_) => true,
        Err(e) if std::env::var("SHOAL_REQUIRE_VM").as_deref() == Ok("1") => {
            panic!("SHOAL_REQUIRE_VM=1 and the microVM backend is unavailable: {e}")
        }
        Err(e) => {
            eprintln!("skipped: the microVM backend is unavailable here: {e}");
            false
        }
    }
}

fn with_backend(kind: Kind, case: fn()) {
    if kind == Kind::Microvm && !vm_available() {
        return;
    }
    KIND.with(|k| k.set(kind));
    case();
}

fn current() -> Box<dyn Backend> {
    match KIND.with(Cell::get) {
        Kind::Namespace => Box::new(backend()),
        Kind::Microvm => Box::new(Shared(microvm().expect("checked by with_backend"))),
    }
}

/// A `&'static` backend as a boxed one.
struct Shared(&'static MicrovmBackend);

impl Backend for Shared {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn run(&self, req: Request) -> Result<Outcome, shoal_vm::RunError> {
        self.0.run(req)
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod namespace {
            $( #[test] fn $name() { super::with_backend(super::Kind::Namespace, super::$name) } )*
        }
        mod microvm {
            $( #[test] fn $name() { super::with_backend(super::Kind::Microvm, super::$name) } )*
        }
    };
}

on_both_backends!(
    checker_inside_the_sandbox,
    runs_as_the_requested_uid_and_gid,
    host_env_does_not_leak,
    stdio_exit_code_and_signal,
    exec_failure_is_reported,
    timeout_keeps_partial_stderr_and_outputs_and_kills_everything,
    memory_over_the_limit_is_oom,
    output_over_its_limit,
    stdout_over_its_limit,
    large_stdout_streams_to_a_file,
    missing_file_output_fails_a_successful_job,
    symlinks_never_reach_the_host,
    glob_and_dir_outputs_keep_modes_and_symlinks,
);

/// A busybox rootfs under `dir`: /bin/busybox plus one symlink per applet, /etc/passwd with
/// recognisable content, and /tmp.
fn make_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("install busybox-static for these tests");
    let list = std::process::Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/passwd"), "sandbox-passwd\n").unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    root
}

struct Fixture {
    dir: tempfile::TempDir,
    rootfs: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = make_rootfs(dir.path());
    Fixture { dir, rootfs }
}

impl Fixture {
    fn request(&self, script: &str) -> Request {
        let work_dir = self.dir.path().join(format!("work-{}", rand_suffix()));
        fs::create_dir(&work_dir).unwrap();
        Request {
            rootfs: self.rootfs.clone(),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), "/bin".into())],
            workdir: "/".into(),
            uid: 0,
            gid: 0,
            stdin: None,
            inputs: vec![],
            outputs: BTreeMap::new(),
            limits: Limits { timeout_ms: 20_000, memory_bytes: 256 << 20, ..Limits::default() },
            network: false,
            work_dir,
            host_mounts: Vec::new(),
            pci_devices: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn run(req: Request) -> Outcome {
    let work_dir = req.work_dir.clone();
    let out = current().run(req).expect("backend runs");
    // Whatever the backend started for this job is gone (QEMU's command line names the work dir).
    assert_eq!(processes_with(&work_dir.to_string_lossy()), Vec::<String>::new());
    eprintln!(
        "exit {:?}\nstdout (end): {}\nstderr (end): {}",
        out.exit,
        String::from_utf8_lossy(&out.stdout.tail(4096)),
        String::from_utf8_lossy(&out.stderr.tail(4096))
    );
    out
}

fn outputs(list: &[(&str, OutputSpec)]) -> BTreeMap<String, OutputSpec> {
    list.iter().map(|(n, s)| (n.to_string(), s.clone())).collect()
}

const CHECKER: &str = r#"
fail() { echo "FAIL: $*"; exit 1; }
[ "$(ls /sys/class/net)" = "lo" ] || fail "interfaces: $(ls /sys/class/net)"
[ $(( $(cat /sys/class/net/lo/flags) & 1 )) = 1 ] || fail "lo is down"
if echo x 2>/tmp/err > /input/checks/new; then fail "created a file in /input"; fi
grep -q "Read-only" /tmp/err || fail "/input error: $(cat /tmp/err)"
if echo x >> /input/checks/check.sh 2>/dev/null; then fail "appended to an input"; fi
echo overlay > /bin/x && [ "$(cat /bin/x)" = overlay ] || fail "cannot write /bin/x"
echo "pid1=$(cat /proc/1/comm)"
[ ! -e /proc/$HOST_PID ] || fail "host process $HOST_PID visible"
n=$(ls -d /proc/[0-9]* | wc -l)
[ "$n" -le 6 ] || fail "$n processes visible: $(ls -d /proc/[0-9]*)"
[ "$(hostname)" = shoal ] || fail "hostname $(hostname)"
[ "$(id -u):$(id -g)" = "0:0" ] || fail "ids $(id -u):$(id -g)"
echo "ALL OK"
echo "--- env"
tr '\0' '\n' < /proc/$$/environ
"#;

#[test]
fn input_is_read_only_without_inputs_too() {
    let f = fixture();
    let out = run(f.request("if (echo x > /input/new) 2>&1; then echo WROTE; fi; ls -A /input"));
    let stdout = String::from_utf8_lossy(&out.stdout.to_vec()).into_owned();
    assert_eq!(out.exit, Exit::Code(0));
    assert!(!stdout.contains("WROTE") && stdout.contains("Read-only"), "{stdout}");
}

fn checker_inside_the_sandbox() {
    let f = fixture();
    let checks = f.path("checks");
    fs::create_dir(&checks).unwrap();
    fs::write(checks.join("check.sh"), CHECKER).unwrap();
    let host_pid = std::process::id().to_string();
    let mut req = f.request("");
    req.argv = vec!["/bin/sh".into(), "/input/checks/check.sh".into()];
    req.env = vec![("HOST_PID".into(), host_pid.clone()), ("B".into(), "two words".into())];
    req.inputs = vec![InputMount { name: "checks".into(), host_path: checks.clone() }];
    let out = run(req);
    let stdout = String::from_utf8_lossy(&out.stdout.to_vec()).into_owned();
    assert_eq!(out.exit, Exit::Code(0), "{stdout}");
    assert!(stdout.contains("ALL OK"));
    let env: Vec<&str> = stdout.split("--- env\n").nth(1).unwrap().lines().collect();
    assert_eq!(env, vec![format!("HOST_PID={host_pid}").as_str(), "B=two words"]);
    assert!(!f.rootfs.join("bin/x").exists(), "the overlay wrote through to the host rootfs");
    assert!(!checks.join("new").exists());
    assert_eq!(fs::read_to_string(checks.join("check.sh")).unwrap(), CHECKER);
    let (backend, pid1) = match KIND.with(Cell::get) {
        Kind::Namespace => ("namespace", "shoal-sandbox"),
        Kind::Microvm => ("microvm", "init"),
    };
    assert_eq!(out.backend, backend);
    assert!(stdout.contains(&format!("pid1={pid1}\n")), "{stdout}");
}

fn runs_as_the_requested_uid_and_gid() {
    let f = fixture();
    let mut req = f.request("id -u; id -g; id -G; touch /output/f; stat -c %u:%g /output/f");
    req.uid = 1234;
    req.gid = 2345;
    let out = run(req);
    assert_eq!(out.exit, Exit::Code(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout.to_vec()), "1234\n2345\n2345\n1234:2345\n");
}

fn host_env_does_not_leak() {
    let f = fixture();
    // cargo gives the test process a rich environment; none of it may reach the job.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some() && std::env::var_os("PATH").is_some());
    let mut req = f.request("");
    req.argv = vec!["/bin/cat".into(), "/proc/self/environ".into()];
    req.env = vec![("ONLY".into(), "this".into())];
    let out = run(req);
    assert_eq!(out.exit, Exit::Code(0));
    assert_eq!(out.stdout.to_vec(), b"ONLY=this\0");
}

fn stdio_exit_code_and_signal() {
    let f = fixture();
    let stdin = f.path("stdin");
    fs::write(&stdin, "line1\nline2\n").unwrap();
    let mut req = f.request("cat; echo oops >&2; exit 3");
    req.stdin = Some(stdin);
    let out = run(req);
    assert_eq!(out.exit, Exit::Code(3));
    assert_eq!(out.stdout.to_vec(), b"line1\nline2\n");
    assert_eq!(out.stderr.to_vec(), b"oops\n");

    let out = run(f.request("kill -TERM $$"));
    assert_eq!(out.exit, Exit::Signal(15));
    let out = run(f.request("exec cat")); // no stdin given: /dev/null
    assert_eq!((out.exit, out.stdout.to_vec()), (Exit::Code(0), vec![]));
}

fn exec_failure_is_reported() {
    let f = fixture();
    let mut req = f.request("");
    req.argv = vec!["no-such-program".into()];
    let out = run(req);
    match out.exit {
        Exit::Error(m) => assert!(m.contains("cannot execute `no-such-program`"), "{m}"),
        other => panic!("{other:?}"),
    }
}

fn processes_with(marker: &str) -> Vec<String> {
    let mut found = vec![];
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                found.push(cmd);
            }
        }
    }
    found
}

fn timeout_keeps_partial_stderr_and_outputs_and_kills_everything() {
    let f = fixture();
    let mut req = f.request("echo partial >&2; echo part > /output/p; sleep 98761 & sleep 98762");
    // Long enough for the shell to start on a loaded two-core machine; the job sleeps far longer.
    req.limits.timeout_ms = 2_000;
    req.outputs = outputs(&[("p", OutputSpec::File("/output/p".into())), ("q", OutputSpec::File("/output/q".into()))]);
    let out = run(req);
    // The outputs prove PID 1 enforced the timeout and collected after killing the job:
    // the host's own deadline (timeout + 2 s) kills the helper, which would have lost them.
    assert_eq!(out.exit, Exit::Timeout);
    assert_eq!(out.stderr.to_vec(), b"partial\n");
    match &out.outputs["p"] {
        CollectedOutput::File(p) => assert_eq!(fs::read_to_string(p).unwrap(), "part\n"),
        other => panic!("{other:?}"),
    }
    assert!(!out.outputs.contains_key("q"));
    assert_eq!(processes_with("9876"), Vec::<String>::new());
}

fn have_cgroups() -> bool {
    shoal_vm::cgroup::Hierarchy::detect().is_ok()
}

fn memory_over_the_limit_is_oom() {
    assert!(KIND.with(Cell::get) == Kind::Microvm || have_cgroups(), "this host should have cgroups");
    let f = fixture();
    let mut req = f.request("awk 'BEGIN { s = \"xxxxxxxxxxxxxxxx\"; while (1) s = s s }'");
    req.limits.memory_bytes = 64 << 20;
    let out = run(req);
    assert_eq!(out.exit, Exit::Oom);
    assert!(out.peak_memory_bytes >= 60 << 20, "peak {}", out.peak_memory_bytes);
}

#[test]
fn cgroup_is_gone_afterwards_and_peak_is_measured() {
    assert!(have_cgroups());
    let f = fixture();
    let out = run(f.request("grep memory /proc/self/cgroup; head -c 20000000 /dev/zero > /scratch/z"));
    assert_eq!(out.exit, Exit::Code(0));
    let line = String::from_utf8_lossy(&out.stdout.to_vec()).trim().to_string();
    let rel = line.splitn(3, ':').nth(2).unwrap();
    assert!(rel.contains("/shoal/job-"), "{rel}");
    let dir = Path::new("/sys/fs/cgroup/memory").join(rel.trim_start_matches('/'));
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(out.peak_memory_bytes >= 20_000_000, "peak {}", out.peak_memory_bytes);
}

/// The job's memory cgroup as /proc/self/cgroup names it (the first line of `out`'s stdout).
fn memory_cgroup_of(out: &Outcome) -> String {
    let text = String::from_utf8_lossy(&out.stdout.to_vec()).into_owned();
    let line = text.lines().next().unwrap_or_default();
    line.splitn(3, ':').nth(2).unwrap_or_else(|| panic!("no cgroup line in {text:?}")).to_string()
}

#[test]
fn a_reused_cgroup_counts_only_its_own_job() {
    assert!(have_cgroups());
    let f = fixture();
    let b = backend();
    let show = "grep memory /proc/self/cgroup";
    let job = |script: &str, memory_bytes: u64| {
        let mut req = f.request(&format!("{show}; {script}"));
        req.limits.memory_bytes = memory_bytes;
        let out = b.run(req).unwrap();
        // A job returns while its helper may still be exiting; its cgroup comes back after.
        b.reap_pending();
        let cgroup = memory_cgroup_of(&out);
        assert!(cgroup.contains("/shoal/job-"), "a job ran outside a job cgroup: {cgroup}");
        (out, cgroup)
    };
    let (big, first) = job("head -c 30000000 /dev/zero > /scratch/z", 256 << 20);
    assert_eq!(big.exit, Exit::Code(0));
    assert!(big.peak_memory_bytes >= 30_000_000, "peak {}", big.peak_memory_bytes);

    // The same cgroup, its peak counted from this job's start.
    let (small, second) = job("true", 64 << 20);
    assert_eq!(small.exit, Exit::Code(0));
    assert_eq!(second, first, "the first cgroup was not reused");
    assert!(small.peak_memory_bytes < 10_000_000, "peak {} counts an earlier job", small.peak_memory_bytes);

    // The limit follows the job, not the cgroup's history: raised from 64 MiB again.
    let (again, third) = job("head -c 100000000 /dev/zero > /scratch/z", 256 << 20);
    assert_eq!(again.exit, Exit::Code(0), "{}", String::from_utf8_lossy(&again.stderr.to_vec()));
    assert_eq!(third, first);

    let (oom, fourth) = job("awk 'BEGIN { s = \"xxxxxxxxxxxxxxxx\"; while (1) s = s s }'", 64 << 20);
    assert_eq!(oom.exit, Exit::Oom);
    assert_eq!(fourth, first);
    // ...and lowered again: killed at 64 MiB, not at an earlier job's 256.
    assert!(oom.peak_memory_bytes <= 72 << 20, "peak {} over the 64 MiB limit", oom.peak_memory_bytes);

    // A cgroup with an OOM kill is not reused, and the kill is not blamed on the next job
    // (it fails: a failure is what a kill counted by mistake would turn into `oom`).
    let (failed, fifth) = job("exit 3", 256 << 20);
    assert_eq!(failed.exit, Exit::Code(3), "{}", String::from_utf8_lossy(&failed.stderr.to_vec()));
    assert_ne!(fifth, fourth, "a cgroup with an OOM kill was reused");
}

fn output_over_its_limit() {
    let f = fixture();
    let mut req = f.request("dd if=/dev/zero of=/output/big bs=1M count=3; echo small > /output/small");
    req.limits.output_bytes_max = 1 << 20;
    req.outputs = outputs(&[
        ("big", OutputSpec::File("/output/big".into())),
        ("small", OutputSpec::File("/output/small".into())),
    ]);
    let out = run(req);
    assert_eq!(out.exit, Exit::OutputTooLarge { output: "big".into(), limit_bytes: 1 << 20 });
    assert!(out.outputs.is_empty());
}

fn stdout_over_its_limit() {
    let f = fixture();
    let mut req = f.request("yes");
    req.limits.stdout_bytes_max = 1000;
    let out = run(req);
    assert_eq!(out.exit, Exit::OutputTooLarge { output: "stdout".into(), limit_bytes: 1000 });
    assert_eq!(out.stdout.len(), 1000);
}

/// Peak resident memory of this process (nextest runs each test in a process of its own), bytes.
fn peak_rss_bytes() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// A job writing 2 GiB to stdout took the runner to ~570 MB of memory: stdout was buffered
/// whole before its limit applied. Past 1 MiB it now goes to a file of the work directory.
fn large_stdout_streams_to_a_file() {
    let f = fixture();
    let mut req = f.request("head -c 32000000 /dev/zero; echo end");
    req.limits.stdout_bytes_max = 256 << 20;
    req.limits.memory_bytes = 256 << 20;
    let before = peak_rss_bytes();
    let out = run(req);
    assert_eq!(out.exit, Exit::Code(0), "{}", String::from_utf8_lossy(&out.stderr.to_vec()));
    assert!(matches!(out.stdout, shoal_vm::Captured::File { len: 32_000_004, .. }), "{:?}", out.stdout.len());
    assert_eq!(out.stdout.tail(4), b"end\n");
    let grown = peak_rss_bytes().saturating_sub(before);
    assert!(grown < 16 << 20, "the runner's peak memory grew by {grown} bytes for 32 MB of stdout");
}

fn missing_file_output_fails_a_successful_job() {
    let f = fixture();
    let mut req = f.request("true");
    req.outputs = outputs(&[("x", OutputSpec::File("/output/x".into()))]);
    let out = run(req);
    assert_eq!(out.exit, Exit::Error("output `x`: /output/x was not created".into()));
}

fn symlinks_never_reach_the_host() {
    let f = fixture();
    let mut req = f.request("mkdir /output/d && ln -s /etc/passwd /output/d/link && ln -s /etc /output/a");
    req.outputs =
        outputs(&[("d", OutputSpec::Dir("/output/d".into())), ("p", OutputSpec::File("/output/a/passwd".into()))]);
    let out = run(req);
    assert_eq!(out.exit, Exit::Code(0));
    let CollectedOutput::Dir(d) = &out.outputs["d"] else { panic!() };
    assert_eq!(fs::read_link(d.join("link")).unwrap(), Path::new("/etc/passwd"));
    let CollectedOutput::File(p) = &out.outputs["p"] else { panic!() };
    assert_eq!(fs::read_to_string(p).unwrap(), "sandbox-passwd\n");
    assert!(!fs::symlink_metadata(p).unwrap().file_type().is_symlink());

    // A host file the image does not have stays out of reach.
    assert!(Path::new("/etc/hostname").exists() || Path::new("/etc/os-release").exists());
    let mut req = f.request("ln -s /etc /output/a");
    req.outputs = outputs(&[("h", OutputSpec::File("/output/a/os-release".into()))]);
    let out = run(req);
    assert_eq!(out.exit, Exit::Error("output `h`: /output/a/os-release was not created".into()));
}

fn glob_and_dir_outputs_keep_modes_and_symlinks() {
    let f = fixture();
    let script = "mkdir -p /output/res/sub /scratch/logs/deep && echo f > /output/res/sub/f && chmod 750 /output/res/sub/f \
        && chmod 700 /output/res/sub && ln -s sub/f /output/res/l \
        && echo a > /scratch/logs/a.log && echo b > /scratch/logs/deep/b.log && echo c > /scratch/logs/c.txt";
    let mut req = f.request(script);
    req.outputs = outputs(&[
        ("res", OutputSpec::Dir("/output/res".into())),
        ("logs", OutputSpec::Glob("/scratch/logs/**/*.log".into())),
        ("empty", OutputSpec::Glob("/output/*.nothing".into())),
    ]);
    let out = run(req);
    assert_eq!(out.exit, Exit::Code(0));
    let CollectedOutput::Dir(res) = &out.outputs["res"] else { panic!() };
    let mode = |p: PathBuf| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(res.join("sub/f")), 0o750);
    assert_eq!(mode(res.join("sub")), 0o700);
    assert_eq!(fs::read_link(res.join("l")).unwrap(), Path::new("sub/f"));
    let CollectedOutput::Dir(logs) = &out.outputs["logs"] else { panic!() };
    assert_eq!(fs::read_to_string(logs.join("a.log")).unwrap(), "a\n");
    assert_eq!(fs::read_to_string(logs.join("deep/b.log")).unwrap(), "b\n");
    assert!(!logs.join("c.txt").exists());
    let CollectedOutput::Dir(empty) = &out.outputs["empty"] else { panic!() };
    assert_eq!(fs::read_dir(empty).unwrap().count(), 0);
}

#[test]
fn setup_errors_are_run_errors() {
    let f = fixture();
    let mut req = f.request("true");
    req.rootfs = f.path("nope");
    assert!(matches!(backend().run(req), Err(shoal_vm::RunError::RootfsMissing { .. })));
    let mut req = f.request("true");
    req.outputs = outputs(&[("x", OutputSpec::File("/etc/passwd".into()))]);
    assert!(matches!(backend().run(req), Err(shoal_vm::RunError::InvalidRequest(_))));
    let backend = NamespaceBackend::new(HelperCommand::new("/nonexistent/helper"));
    assert!(matches!(backend.run(f.request("true")), Err(shoal_vm::RunError::HelperSpawn { .. })));
}

#[test]
fn a_gated_job_starts_only_after_its_gate_and_a_sandbox_never_built_never_calls_it() {
    let f = fixture();
    let dir = f.path("gate");
    fs::create_dir(&dir).unwrap();
    // The input is a bind mount of `dir`: a file the gate writes there is seen by the job only
    // if the job starts after the gate.
    let mut req = f.request("cat /input/gate/opened");
    req.inputs = vec![InputMount { name: "gate".into(), host_path: dir.clone() }];
    let mut calls = 0;
    let out = backend()
        .run_gated(req, &mut || {
            calls += 1;
            // Long enough for a job that did not wait to have run `cat` and failed.
            std::thread::sleep(std::time::Duration::from_millis(300));
            fs::write(dir.join("opened"), "after the gate").unwrap();
        })
        .unwrap();
    assert_eq!(calls, 1);
    assert_eq!(out.exit, Exit::Code(0), "{}", String::from_utf8_lossy(&out.stderr.to_vec()));
    assert_eq!(out.stdout.to_vec(), b"after the gate");

    let broken = NamespaceBackend::new(HelperCommand::new("/nonexistent/helper"));
    let mut calls = 0;
    let result = broken.run_gated(f.request("true"), &mut || calls += 1);
    assert!(matches!(result, Err(shoal_vm::RunError::HelperSpawn { .. })), "{result:?}");
    assert_eq!(calls, 0, "the gate was called for a sandbox that was never built");
}

#[test]
fn the_forking_backend_refuses_a_multi_threaded_caller() {
    // A second thread, alive during the call whatever the harness runs tests on: forking here
    // would copy one thread of two.
    let f = fixture();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || rx.recv());
    let err = NamespaceBackend::forking_for_one_job().run(f.request("true")).unwrap_err();
    drop(tx);
    let _ = other.join();
    assert!(err.to_string().contains("needs a single-threaded caller"), "{err}");
}

#[test]
fn probe_succeeds_here() {
    NamespaceBackend::probe().unwrap();
}

/// `cargo test -p shoal-vm --test it -- --ignored --nocapture bench`: median wall time of
/// `echo hi`, through the backend and through `unshare ... chroot` as a reference.
#[test]
#[ignore]
fn bench_echo_hi() {
    let f = fixture();
    let n = 30;
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let b = backend();
    let mut ours = vec![];
    for _ in 0..n {
        let mut req = f.request("");
        req.argv = vec!["/bin/echo".into(), "hi".into()];
        let t = Instant::now();
        let out = b.run(req).unwrap();
        ours.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(out.stdout.to_vec(), b"hi\n");
    }
    let mut reference = vec![];
    for _ in 0..n {
        let t = Instant::now();
        let out = std::process::Command::new("unshare")
            .args(["-Urmpf", "--mount-proc", "chroot"])
            .arg(&f.rootfs)
            .args(["/bin/echo", "hi"])
            .output()
            .unwrap();
        reference.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(out.stdout, b"hi\n");
    }
    eprintln!(
        "echo hi: namespace backend median {:.2} ms; unshare -Urmpf --mount-proc chroot median {:.2} ms",
        median(ours),
        median(reference)
    );
}

#[test]
fn network_true_shares_the_host_network() {
    let f = fixture();
    let host_ifaces = fs::read_to_string("/proc/net/dev").unwrap().lines().count();
    let mut req = f.request("cat /proc/net/dev");
    req.network = true;
    let out = run(req);
    assert_eq!(out.exit, Exit::Code(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout.to_vec()).lines().count(), host_ifaces);
    let out = run(f.request("cat /proc/net/dev"));
    assert_eq!(String::from_utf8_lossy(&out.stdout.to_vec()).lines().count(), 3, "header lines + lo only");
}

/// A job cgroup of a process that is gone (killed before it could remove it) is removed when
/// the next backend starts; one of a live process is left alone.
#[test]
fn job_cgroups_of_killed_processes_are_removed() {
    use shoal_vm::cgroup::{Hierarchy, remove_stale};
    let hierarchy = Hierarchy::detect().expect("this host should have cgroups");
    let parents: Vec<PathBuf> = match &hierarchy {
        Hierarchy::V2 { parent, .. } => vec![parent.clone()],
        Hierarchy::V1 { memory, cpu, pids } => {
            std::iter::once(memory.clone()).chain(cpu.clone()).chain(pids.clone()).collect()
        }
    };
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    assert!(!Path::new("/proc").join(dead.to_string()).exists(), "pid {dead} came back already");
    let mut stale = Vec::new();
    let mut kept = Vec::new();
    for p in &parents {
        fs::create_dir_all(p).unwrap();
        let s = p.join(format!("job-{dead}-0"));
        let k = p.join("job-1-4242"); // PID 1 lives as long as the machine
        for d in [&s, &k] {
            let _ = fs::create_dir(d);
        }
        stale.push(s);
        kept.push(k);
    }
    let n = remove_stale(&hierarchy);
    let left: Vec<_> = stale.iter().filter(|d| d.exists()).collect();
    let gone: Vec<_> = kept.iter().filter(|d| !d.exists()).collect();
    for d in &kept {
        let _ = fs::remove_dir(d);
    }
    assert!(left.is_empty(), "stale cgroups left: {left:?}");
    assert!(gone.is_empty(), "cgroups of a live process removed: {gone:?}");
    assert!(n >= stale.len(), "removed {n}");
}
