//! A network lab for tests that boot whole machines: a network namespace of the test's own
//! holding a bridge (`br0`, 10.77.0.1/24), tap devices on it for QEMU, and a DHCP server
//! (busybox `udhcpd`) handing out 10.77.0.100-150. The test's thread enters the namespace, so
//! every process it starts (a `shoal node`, QEMU, udhcpd) and every connection it makes is on
//! that bridge, and nothing it does reaches the host's own interfaces. Dropping the lab kills
//! what it started and deletes the namespace (and with it the bridge and taps), also when the
//! test panics; scripts/test.sh checks that no `shoal-lab-*` namespace outlives the tests.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

/// The bridge's address: where the test's own node listens.
pub const BRIDGE_IP: &str = "10.77.0.1";
/// Namespaces a test run may leave behind are found by this prefix.
pub const NETNS_PREFIX: &str = "shoal-lab-";

pub struct Lab {
    pub name: String,
    /// The namespace the thread was in before it entered the lab's.
    home_ns: File,
    children: Vec<Child>,
    pub dir: tempfile::TempDir,
    taps: u32,
}

/// Whether this host can build a lab (root, `ip`, tap devices). Without, the tests that need one
/// skip, unless `SHOAL_REQUIRE_VM=1` (CI) makes that a failure.
pub fn lab_or_skip(what: &str) -> Option<Lab> {
    match Lab::new() {
        Ok(lab) => Some(lab),
        Err(why) => {
            let why = format!("{what} needs a network namespace with a bridge and a tap device: {why}");
            if std::env::var("SHOAL_REQUIRE_VM").as_deref() == Ok("1") {
                panic!("SHOAL_REQUIRE_VM=1 and {why}");
            }
            eprintln!("skipped: {why}");
            None
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e} (install iproute2)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Lab {
    pub fn new() -> Result<Lab, String> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        remove_orphans();
        let name = format!("{NETNS_PREFIX}{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let home_ns = File::open("/proc/thread-self/ns/net").map_err(|e| format!("/proc/thread-self/ns/net: {e}"))?;
        ip(&["netns", "add", &name])?;
        let lab = Lab {
            name,
            home_ns,
            children: Vec::new(),
            dir: tempfile::Builder::new().prefix("shoal-lab-").tempdir().map_err(|e| e.to_string())?,
            taps: 0,
        };
        let ns = File::open(format!("/var/run/netns/{}", lab.name)).map_err(|e| format!("the new namespace: {e}"))?;
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("entering the namespace: {e}"))?;
        ip(&["link", "set", "lo", "up"])?;
        ip(&["link", "add", "br0", "type", "bridge"])?;
        ip(&["addr", "add", &format!("{BRIDGE_IP}/24"), "dev", "br0"])?;
        ip(&["link", "set", "br0", "up"])?;
        Ok(lab)
    }

    /// A new tap device on the bridge, for one QEMU NIC; returns its name.
    pub fn tap(&mut self) -> String {
        let tap = format!("tap{}", self.taps);
        self.taps += 1;
        ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]).expect("a tap device");
        ip(&["link", "set", &tap, "master", "br0"]).expect("the tap on the bridge");
        ip(&["link", "set", &tap, "up"]).expect("the tap up");
        tap
    }

    /// Serves DHCP on the bridge (busybox udhcpd, 10.77.0.100-150, 10-minute leases).
    pub fn dhcp(&mut self) {
        let conf = self.dir.path().join("udhcpd.conf");
        let leases = self.dir.path().join("udhcpd.leases");
        std::fs::write(&leases, b"").unwrap();
        std::fs::write(
            &conf,
            format!(
                "start 10.77.0.100\nend 10.77.0.150\ninterface br0\nlease_file {}\n\
                 option subnet 255.255.255.0\noption lease 600\n",
                leases.display()
            ),
        )
        .unwrap();
        let child = Command::new("busybox")
            .args(["udhcpd", "-f", conf.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(self.dir.path().join("udhcpd.log")).unwrap())
            .spawn()
            .expect("busybox udhcpd (busybox-static)");
        self.children.push(child);
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = setns(&self.home_ns, CloneFlags::CLONE_NEWNET);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Deletes the labs of test processes that are gone (killed by a timeout: no Drop ran).
fn remove_orphans() {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else { return };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(NETNS_PREFIX).and_then(|r| r.split('-').next()) else { continue };
        if !Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// Partitions of an MBR disk image: (type, first byte, length in bytes), in table order.
pub fn mbr_partitions(image: &Path) -> Vec<(u8, u64, u64)> {
    use std::io::Read;
    let mut mbr = [0u8; 512];
    File::open(image).and_then(|mut f| f.read_exact(&mut mbr)).expect("the image's MBR");
    assert_eq!(&mbr[510..], &[0x55, 0xaa], "{} has no MBR", image.display());
    (0..4)
        .map(|i| {
            let e = &mbr[0x1be + 16 * i..0x1be + 16 * (i + 1)];
            let lba = u64::from(u32::from_le_bytes(e[8..12].try_into().unwrap()));
            let sectors = u64::from(u32::from_le_bytes(e[12..16].try_into().unwrap()));
            (e[4], lba * 512, sectors * 512)
        })
        .filter(|p| p.0 != 0)
        .collect()
}

fn netns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

#[test]
fn a_lab_is_gone_with_everything_it_started_when_its_test_panics() {
    let Some(probe) = lab_or_skip("the network lab") else { return };
    drop(probe);
    let (name, pid) = std::thread::spawn(|| {
        let mut lab = Lab::new().unwrap();
        lab.dhcp();
        let tap = lab.tap();
        // sysfs shows the process's namespace, not this thread's: ask `ip`, which runs in the lab.
        assert!(ip(&["link", "show", &tap]).is_ok(), "the tap is in the lab's namespace");
        let pid = lab.children[0].id();
        let name = lab.name.clone();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _lab = lab;
            panic!("a test that fails");
        }));
        assert!(caught.is_err());
        (name, pid)
    })
    .join()
    .unwrap();
    assert!(!netns_exists(&name), "namespace {name} outlived its lab");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "udhcpd ({pid}) outlived its lab");
}
