//! `shoal live run` on this host, with `--root` pointing every path of the live system at a test
//! directory: a `/sys/class/block` with a `SHOAL` FAT partition (an image made by mkfs.vfat), its
//! mounted directory holding `shoal.toml` (nothing is mounted without root `/`), a kernel
//! command line, and files standing for tty1 and the serial console. The supervisor starts a
//! real `shoal node` that joins the test's node. The boot tests (live.rs) run the same in a VM.
//! And `shoal live prepare-disk` on an image file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::mesh::{MeshNode, mesh_key};
use crate::support::*;

/// Longest from `shoal live run` starting to its node heard by the test's node.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest for a line to reach the serial console file once its cause is set up; the
/// configuration is read again every 10 s.
const SERIAL_TIMEOUT: Duration = Duration::from_secs(45);

/// A free TCP and UDP port on 127.0.0.1 (both bound to 0, then released).
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// The live system's root: a disk `sdz` with a `SHOAL` partition `sdz1`, `shoal.toml` in its
/// (would-be) mount point, `cmdline` as the kernel's.
struct LiveRoot {
    dir: tempfile::TempDir,
}

impl LiveRoot {
    fn new(toml: &[u8], cmdline: &str) -> LiveRoot {
        let dir = tempfile::Builder::new().prefix("shoal-live-").tempdir().unwrap();
        let r = dir.path();
        let disk = r.join("sys/devices/pci0/block/sdz");
        for d in
            [disk.join("sdz1"), r.join("sys/class/block"), r.join("dev"), r.join("proc"), r.join("run/shoal/config")]
        {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(disk.join("size"), "16384\n").unwrap();
        std::fs::write(disk.join("sdz1/size"), "8192\n").unwrap();
        std::fs::write(disk.join("sdz1/partition"), "1\n").unwrap();
        std::os::unix::fs::symlink(&disk, r.join("sys/class/block/sdz")).unwrap();
        std::os::unix::fs::symlink(disk.join("sdz1"), r.join("sys/class/block/sdz1")).unwrap();
        let out = Command::new("mkfs.vfat")
            .args(["-C", "-n", "SHOAL", r.join("dev/sdz1").to_str().unwrap(), "4096"])
            .output()
            .expect("mkfs.vfat (dosfstools)");
        assert_success(&out, "mkfs.vfat");
        std::fs::write(r.join("proc/cmdline"), cmdline).unwrap();
        std::fs::copy("/proc/meminfo", r.join("proc/meminfo")).unwrap();
        std::fs::write(r.join("proc/mounts"), "").unwrap();
        std::fs::write(r.join("dev/tty1"), "").unwrap();
        std::fs::write(r.join("dev/ttyS0"), "").unwrap();
        std::fs::write(r.join("run/shoal/config/shoal.toml"), toml).unwrap();
        LiveRoot { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn serial(&self) -> String {
        std::fs::read_to_string(self.path("dev/ttyS0")).unwrap_or_default()
    }
}

/// `shoal live run --root`, in its own process group so that its node goes with it.
struct Supervisor {
    child: Child,
    log: PathBuf,
}

impl Supervisor {
    fn start(root: &LiveRoot, http_port: u16) -> Supervisor {
        let log = root.path("live.log");
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(shoal_bin());
        cmd.args(["live", "run", "--root", root.dir.path().to_str().unwrap()])
            .args(["--http", &format!("127.0.0.1:{http_port}")])
            // No cloud here: nothing listens on port 1, so the answer is at once "none".
            .args(["--metadata-url", "http://127.0.0.1:1"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        Supervisor { child: cmd.spawn().expect("spawn shoal live run"), log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the serial console file shows every one of `needles` in one block.
    fn wait_serial(&mut self, root: &LiveRoot, needles: &[&str], within: Duration) -> String {
        let start = Instant::now();
        loop {
            let serial = root.serial();
            if serial.split("== shoal ==").any(|block| needles.iter().all(|n| block.contains(n))) {
                return serial;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("shoal live run exited ({status}):\n{}", self.log());
            }
            assert!(
                start.elapsed() < within,
                "the serial console did not show {needles:?} in {within:?}:\n{serial}\n--- log ---\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // The supervisor and the node it started: the whole group.
        let pgid = self.child.id() as i32;
        // SAFETY: kill(2) with a negative pid signals the process group this test made; it
        // touches no memory.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- shoal live run ---\n{}", self.log());
        }
    }
}

fn key_hex(key: &Path) -> String {
    std::fs::read_to_string(key).unwrap().lines().last().unwrap().trim().to_string()
}

/// shoal.toml as Notepad saves it (a byte-order mark, CRLF), joining `join`.
fn notepad_toml(key_hex: &str, join: &str, port: u16) -> Vec<u8> {
    let text = format!(
        "\u{feff}# edited on Windows\r\nmesh_key = \"{key_hex}\"\r\njoin = [\"{join}\"]\r\nntp = []\r\n\
         listen_port = {port}\r\nblobs_port = {port}\r\nbackend = \"namespace\"\r\n\r\n[labels]\r\nroom = \"b12\"\r\n"
    );
    text.into_bytes()
}

#[test]
fn live_run_joins_the_mesh_with_the_partitions_config_and_the_command_lines_labels_and_keeps_its_key_there() {
    let home = Home::empty();
    let key = mesh_key(home.path());
    let node = MeshNode::start(Home::empty(), &key, &[], &[]);
    let port = free_port();
    let root = LiveRoot::new(&notepad_toml(&key_hex(&key), &node.listen, port), "console=ttyS0 shoal.labels=room=c7");
    let mut live = Supervisor::start(&root, free_port());

    let start = Instant::now();
    let peer = loop {
        let v = node.get_json("/v1/peers");
        if let Some(p) = v["peers"].as_array().unwrap().iter().find(|p| p["me"] != true && !p["caps"].is_null()) {
            break p.clone();
        }
        assert!(start.elapsed() < JOIN_TIMEOUT, "the live node did not join in {JOIN_TIMEOUT:?}:\n{}", live.log());
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(peer["caps"]["labels"]["room"], "c7", "the kernel command line's labels win: {peer}");
    assert_eq!(peer["caps"]["microvm"], false, "backend = \"namespace\": {peer}");
    let live_id = peer["node"].as_str().unwrap().to_string();

    // The status page names the node and its peer, and where its settings came from.
    live.wait_serial(
        &root,
        &[&live_id[..16], "1 peer: ", "(running)", "shoal.toml on the SHOAL partition (sdz1) + 1 shoal.* boot option"],
        SERIAL_TIMEOUT,
    );
    // Its identity is kept on the SHOAL partition, and is the one the node runs with.
    let kept = std::fs::read(root.path("run/shoal/config/node.key")).unwrap();
    assert_eq!(kept.len(), 32);
    assert_eq!(std::fs::read(root.path("var/lib/shoal/node.key")).unwrap(), kept);
    let log = live.log();
    assert!(
        log.contains(&format!("live: identity: node {} (node.key on the SHOAL partition)", &live_id[..16])),
        "{log}"
    );
    assert!(log.contains("live: clock: no NTP server answered; taking the mesh's time"), "{log}");
}

#[test]
fn live_run_shows_a_bad_config_and_a_wrong_mesh_key_on_the_screen_and_takes_the_fixed_file() {
    let home = Home::empty();
    let key = mesh_key(home.path());
    let node = MeshNode::start(Home::empty(), &key, &[], &[]);
    let port = free_port();
    let root = LiveRoot::new(b"mesh_key = \"abc\"\njoin = []\n", "console=ttyS0");
    let mut live = Supervisor::start(&root, free_port());
    live.wait_serial(
        &root,
        &[
            " problem   shoal.toml:1:12: the mesh key is 3 characters, not 64;",
            "(`shoal mesh init` wrote it)",
            "(waiting)",
            " config    shoal.toml on the SHOAL partition (sdz1)\n",
        ],
        SERIAL_TIMEOUT,
    );
    assert!(!live.log().contains("node: starting"), "no node with a bad configuration:\n{}", live.log());

    // A well-formed key that is not the mesh's: the node starts, reaches nobody, and the page says
    // what to check (the node itself logs failed dials only at debug level).
    let config = root.path("run/shoal/config/shoal.toml");
    std::fs::write(&config, notepad_toml(&"11".repeat(32), &node.listen, port)).unwrap();
    live.wait_serial(
        &root,
        &[" problem   no peer reached in 30 s: is the mesh key the mesh's", "(running)"],
        SERIAL_TIMEOUT + Duration::from_secs(30),
    );
    assert_eq!(node.live_peers().len(), 1, "a node with another mesh key is not in the mesh");

    // Fixed on the partition: read again within 10 s, the node restarts with it and joins.
    std::fs::write(&config, notepad_toml(&key_hex(&key), &node.listen, port)).unwrap();
    live.wait_serial(&root, &[" problem   none", "1 peer: "], SERIAL_TIMEOUT);
    assert!(live.log().contains("live: config: changed; restarting the node with it"), "{}", live.log());
}

#[test]
fn prepare_disk_asks_refuses_a_used_disk_without_wipe_and_makes_a_store() {
    let home = Home::empty();
    let disk = home.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(96 << 20).unwrap();
    let d = disk.to_str().unwrap();
    // No terminal to type the name on: refused, untouched.
    let out = home.shoal(&["live", "prepare-disk", d]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("stdin is not a terminal, so nobody can confirm: pass --yes"), "{}", stderr(&out));
    assert!(std::fs::read(&disk).unwrap().iter().all(|&b| b == 0), "written without a confirmation");
    let out = home.shoal(&["live", "prepare-disk", d, "--yes"]);
    assert_success(&out, "prepare-disk on a blank disk");
    // It now has a partition table: refused without --wipe, accepted with it.
    let out = home.shoal(&["live", "prepare-disk", d, "--yes"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("holds an MBR (a DOS partition table or a boot sector); pass --wipe"),
        "{}",
        stderr(&out)
    );
    assert_success(&home.shoal(&["live", "prepare-disk", d, "--yes", "--wipe"]), "prepare-disk --wipe");
    // The file system checks clean and carries the store's label.
    let out =
        Command::new("e2fsck").args(["-fn", &format!("{d}?offset=1048576")]).output().expect("e2fsck (e2fsprogs)");
    assert_success(&out, "e2fsck");
    assert!(stdout(&out).contains("SHOAL-STORE:"), "{}", stdout(&out));
}
