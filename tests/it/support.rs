//! Test support: find the binary, make a home with busybox:latest, run commands with deadlines.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Every command a test runs is killed after this long, so a hang fails the test instead of CI.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The `shoal` binary of this build (target/<profile>/shoal, beside the test's deps/ directory).
pub fn shoal_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let bin = profile_dir.join("shoal");
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`, done by scripts/test.sh)",
        bin.display()
    );
    bin
}

pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    /// A fresh store holding `busybox:latest`, built from the host's static busybox.
    pub fn with_busybox() -> Home {
        let home = Home::empty();
        let rootfs = home.dir.path().join("busybox-rootfs");
        make_busybox_rootfs(&rootfs);
        home.build_busybox(&rootfs);
        home
    }

    /// `busybox:latest` built again from `rootfs` (the tests change a file of it).
    pub fn build_busybox(&self, rootfs: &Path) {
        let out = self.shoal(&[
            "image",
            "build",
            rootfs.to_str().unwrap(),
            "--tag",
            "busybox:latest",
            "--env",
            "PATH=/bin:/sbin:/usr/bin:/usr/sbin",
        ]);
        assert_success(&out, "shoal image build");
    }

    pub fn empty() -> Home {
        Home { dir: tempfile::Builder::new().prefix("shoal-it-").tempdir().expect("temp dir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Writes `text` to a file in the test dir and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write test file");
        path
    }

    pub fn shoal(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(shoal_bin());
        cmd.args(args).env("SHOAL_HOME", self.store()).env_remove("RUST_LOG").current_dir(self.path());
        run_with_deadline(cmd)
    }
}

pub fn run_with_deadline(mut cmd: Command) -> Output {
    use std::io::Read;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    // Read both pipes as the command writes: a command that writes more than a pipe holds
    // (64 KiB) would otherwise wait for a reader that waits for it to exit.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_reader = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err_reader = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > COMMAND_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_reader.join().unwrap_or_default();
            panic!("{cmd:?} did not finish in {COMMAND_TIMEOUT:?}; stderr:\n{}", String::from_utf8_lossy(&stderr));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output { status, stdout: out_reader.join().unwrap_or_default(), stderr: err_reader.join().unwrap_or_default() }
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A root filesystem with the host's static busybox and every applet linked.
pub fn make_busybox_rootfs(root: &Path) {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .expect("busybox is missing: run scripts/setup.sh (it installs busybox-static)");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list-full").output().expect("busybox --list-full");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet == "bin/busybox" {
            continue;
        }
        let link = root.join(applet);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let _ = std::os::unix::fs::symlink("/bin/busybox", &link);
    }
    for dir in ["etc", "tmp", "root"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
        .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}

/// The repository's root (for examples/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", stdout(out), stderr(out)))
}

/// Waits until `pred` holds for the DAG's view (`GET /v1/dags/{dag}` through `get`, which answers
/// status and body), looking every `poll`; returns that view. Fails naming `what` and the last view.
pub fn wait_dag_view(
    get: impl Fn(&str) -> (u16, Vec<u8>),
    dag: &str,
    within: Duration,
    poll: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (status, body) = get(&format!("/v1/dags/{dag}"));
        if status == 200 {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            if pred(&v) {
                return v;
            }
            assert!(start.elapsed() < within, "{what}: not reached in {within:?}; last view: {v:#}");
        } else {
            assert!(
                start.elapsed() < within,
                "{what}: DAG unknown after {within:?}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        std::thread::sleep(poll);
    }
}
