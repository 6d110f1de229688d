//! The live image (live-image/): the stick and the cloud image booted for real in QEMU under
//! TCG, on a bridge of the test's own network lab (netlab.rs) beside a `shoal node` of the
//! test's, which hands the live node a job and fetches its output. The image is the one
//! `live-image/build.sh` wrote (scripts/test.sh builds it); without it, or without QEMU, OVMF or
//! a lab, these tests skip, unless `SHOAL_REQUIRE_VM=1` (CI) makes that a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::mesh::{MeshNode, mesh_key, wait_dag};
use crate::netlab::{BRIDGE_IP, Lab, lab_or_skip, mbr_partitions};
use crate::support::*;

/// Longest from power-on to the live node heard by the test's node, under TCG. A boot here takes
/// well under a minute; CI machines vary.
const JOIN_TIMEOUT: Duration = Duration::from_secs(240);
/// Longest for a line to reach the serial console once its cause is set up.
const SERIAL_TIMEOUT: Duration = Duration::from_secs(180);

fn require(what: &str) -> bool {
    if std::env::var("SHOAL_REQUIRE_VM").as_deref() == Ok("1") {
        panic!("SHOAL_REQUIRE_VM=1 and {what}");
    }
    eprintln!("skipped: {what}");
    false
}

/// The built image, or why the test cannot run.
fn built(name: &str) -> Option<PathBuf> {
    let path = repo_root().join("target/live").join(name);
    if path.is_file() {
        return Some(path);
    }
    require(&format!("{} is missing: run live-image/build.sh", path.display()));
    None
}

pub enum Firmware {
    Bios,
    Uefi,
}

pub struct LiveVm {
    child: Child,
    pub serial: PathBuf,
}

pub struct Boot<'a> {
    pub firmware: Firmware,
    /// (image, as a USB stick rather than a virtio disk, format).
    pub disk: (&'a Path, bool, &'a str),
    pub extra_disks: Vec<PathBuf>,
    /// A tap on the lab's bridge and the NIC model on it, or none: a machine without a network.
    pub nic: Option<(String, &'a str)>,
    /// `-rtc base=`: the machine's clock at power-on.
    pub rtc_base: Option<String>,
    pub name: &'a str,
}

impl LiveVm {
    pub fn boot(lab: &Lab, b: Boot<'_>) -> LiveVm {
        let serial = lab.path(&format!("{}.serial", b.name));
        let mut cmd = Command::new("qemu-system-x86_64");
        // An old PC without VT-x/AMD-V (QEMU's default CPU would offer an emulated AMD-V).
        cmd.args(["-M", "pc", "-accel", "tcg", "-cpu", "max,-svm,-vmx", "-m", "2048", "-smp", "2"])
            .args(["-display", "none", "-monitor", "none"])
            .args(["-serial", &format!("file:{}", serial.display())]);
        if let Firmware::Uefi = b.firmware {
            let vars = lab.path(&format!("{}.vars.fd", b.name));
            std::fs::copy("/usr/share/OVMF/OVMF_VARS.fd", &vars).expect("OVMF_VARS.fd (ovmf)");
            cmd.args(["-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd"])
                .args(["-drive", &format!("if=pflash,format=raw,file={}", vars.display())]);
        }
        let (image, usb, format) = b.disk;
        cmd.args(["-drive", &format!("if=none,id=boot,format={format},file={}", image.display())]);
        if usb {
            cmd.args(["-device", "qemu-xhci", "-device", "usb-storage,drive=boot,removable=on,bootindex=0"]);
        } else {
            cmd.args(["-device", "virtio-blk-pci,drive=boot,bootindex=0"]);
        }
        if !b.extra_disks.is_empty() {
            cmd.args(["-device", "ahci,id=ahci"]);
        }
        for (i, d) in b.extra_disks.iter().enumerate() {
            cmd.args(["-drive", &format!("if=none,id=extra{i},format=raw,file={}", d.display())])
                .args(["-device", &format!("ide-hd,drive=extra{i},bus=ahci.{i}")]);
        }
        match &b.nic {
            Some((tap, model)) => cmd
                .args(["-netdev", &format!("tap,id=n0,ifname={tap},script=no,downscript=no")])
                .args(["-device", &format!("{model},netdev=n0")]),
            None => cmd.args(["-nic", "none"]),
        };
        if let Some(base) = &b.rtc_base {
            cmd.args(["-rtc", &format!("base={base},clock=vm")]);
        }
        let log = std::fs::File::create(lab.path(&format!("{}.qemu.log", b.name))).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("qemu-system-x86_64 (run scripts/setup.sh)");
        LiveVm { child, serial }
    }

    pub fn serial(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits until the serial console shows `needle`; returns the console's text.
    pub fn wait_serial(&mut self, needle: &str, within: Duration) -> String {
        let start = Instant::now();
        loop {
            let text = self.serial();
            if text.contains(needle) {
                return text;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("QEMU exited ({status}) before the console showed {needle:?}:\n{}", tail(&text));
            }
            assert!(start.elapsed() < within, "the console did not show {needle:?} in {within:?}:\n{}", tail(&text));
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn power_off(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LiveVm {
    fn drop(&mut self) {
        self.power_off();
        if std::thread::panicking() {
            eprintln!("--- serial console of {} ---\n{}", self.serial.display(), tail(&self.serial()));
        }
    }
}

/// The last 12,000 characters: enough for the status screen and the lines before it.
fn tail(text: &str) -> &str {
    let cut = text.len().saturating_sub(12_000);
    let cut = (cut..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    &text[cut..]
}

/// A FAT file system labelled `label` holding `files`, made the way a person's computer would
/// (mkfs.vfat + mcopy: this host cannot mount vfat).
fn fat_image(path: &Path, label: &str, kib: u64, files: &[(&str, &[u8])]) {
    let _ = std::fs::remove_file(path);
    let out = Command::new("mkfs.vfat")
        .args(["-C", "-n", label, path.to_str().unwrap(), &kib.to_string()])
        .output()
        .expect("mkfs.vfat (dosfstools)");
    assert_success(&out, "mkfs.vfat");
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        let f = dir.path().join(name);
        std::fs::write(&f, bytes).unwrap();
        let out = Command::new("mcopy")
            .args(["-i", path.to_str().unwrap(), f.to_str().unwrap(), &format!("::{name}")])
            .output()
            .expect("mcopy (mtools)");
        assert_success(&out, "mcopy");
    }
}

/// A copy of the stick whose `SHOAL` partition is a fresh one holding `files`.
fn stick_with(lab: &Lab, image: &Path, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let stick = lab.path(&format!("{name}.img"));
    std::fs::copy(image, &stick).unwrap();
    let (_, offset, len) = *mbr_partitions(&stick)
        .iter()
        .find(|p| p.0 == 0x0c)
        .unwrap_or_else(|| panic!("{} has no FAT (0x0c) partition: {:?}", image.display(), mbr_partitions(image)));
    let part = lab.path(&format!("{name}.shoal.vfat"));
    fat_image(&part, "SHOAL", len / 1024, files);
    let bytes = std::fs::read(&part).unwrap();
    assert_eq!(bytes.len() as u64, len);
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(&stick).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&bytes).unwrap();
    stick
}

/// Reads a file back from the stick's `SHOAL` partition (what a person sees on another computer).
fn read_from_stick(stick: &Path, name: &str) -> Option<Vec<u8>> {
    let (_, offset, _) = *mbr_partitions(stick).iter().find(|p| p.0 == 0x0c)?;
    let out = Command::new("mtype")
        .args(["-i", &format!("{}@@{offset}", stick.display()), &format!("::{name}")])
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout)
}

/// A blank disk the live system must leave alone.
fn blank_disk(lab: &Lab, name: &str) -> PathBuf {
    let p = lab.path(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(64 << 20).unwrap();
    p
}

fn assert_untouched(disk: &Path) {
    let bytes = std::fs::read(disk).unwrap();
    assert!(bytes.iter().all(|&b| b == 0), "{} was written by the live system", disk.display());
}

/// What a boot test stands on: the lab serving DHCP, a tap for the live machine, and the test's
/// own node on the bridge (holding busybox:latest for the jobs) with the mesh key's hex.
struct Site {
    lab: Lab,
    tap: String,
    node: MeshNode,
    key_hex: String,
}

fn site(what: &str, node_args: &[&str]) -> Option<Site> {
    let mut lab = lab_or_skip(what)?;
    lab.dhcp();
    let tap = lab.tap();
    let home = Home::with_busybox();
    let key = mesh_key(home.path());
    let at = (format!("/ip4/{BRIDGE_IP}/tcp/0"), format!("{BRIDGE_IP}:0"));
    let node = MeshNode::start_at(home, &key, &[], (&at.0, &at.1), node_args);
    Some(Site { lab, tap, node, key_hex: mesh_key_hex(&key) })
}

impl<'a> Boot<'a> {
    /// `image` as a USB stick of a PC on `tap` with an e1000 (a real PC's NIC, which Debian's cloud
    /// kernel lacks and the stick's has), or with no network.
    fn stick(name: &'a str, firmware: Firmware, image: &'a Path, tap: Option<&str>) -> Boot<'a> {
        Boot {
            firmware,
            disk: (image, true, "raw"),
            extra_disks: vec![],
            nic: tap.map(|t| (t.to_string(), "e1000")),
            rtc_base: None,
            name,
        }
    }
}

/// The key's 64 hex digits: the last line of the file `shoal mesh init` wrote.
fn mesh_key_hex(key: &Path) -> String {
    let text = std::fs::read_to_string(key).unwrap();
    let hex = text.lines().last().unwrap().trim().to_string();
    assert_eq!(hex.len(), 64, "{}: {text}", key.display());
    hex
}

/// shoal.toml for a live node joining `node`, labelled `room = "<room>"`, running its jobs on
/// `backend`. Tests that run a job give "namespace" (the owner allows it here): the live machine
/// is itself emulated (TCG), and a microVM inside it is TCG inside TCG, minutes a job
/// (docs/BENCHMARKS.md). The default backend's test checks what the node announces instead.
fn config(node: &MeshNode, key_hex: &str, room: &str, backend: &str) -> String {
    format!(
        "# written by the test\nmesh_key = \"{key_hex}\"\njoin = [\"{}\"]\nbackend = \"{backend}\"\n\n\
         [labels]\nroom = \"{room}\"\n",
        node.listen
    )
}

/// Waits until `node` hears a peer besides itself; returns that peer's `/v1/peers` entry.
fn wait_live_peer(node: &MeshNode, vm: &mut LiveVm, within: Duration) -> Value {
    let start = Instant::now();
    loop {
        let v = node.get_json("/v1/peers");
        if let Some(p) = v["peers"].as_array().unwrap().iter().find(|p| p["me"] != true) {
            return p.clone();
        }
        if start.elapsed() > within {
            panic!("the live node did not join in {within:?}; its console:\n{}", tail(&vm.serial()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Submits a one-job DAG that only a node labelled `room` may run (`tag` makes its action new,
/// `work` is shell run first); waits for it; returns (dag, the node that ran it, the output as
/// the test's node serves it).
fn run_job_on(node: &MeshNode, room: &str, tag: &str, work: &str, within: Duration) -> (String, String, String) {
    let dag = node.home.write(
        &format!("{room}-{tag}.json"),
        &serde_json::json!({"version": 1, "jobs": [{
            "id": "hello", "image": "busybox:latest",
            "command": ["sh", "-c", format!("{work}echo hello {tag} from $(uname -m); seq 1 1000 | tail -1")],
            "outputs": {"out": "stdout"},
            "requirements": {"labels": {"room": room}}}]})
        .to_string(),
    );
    let out = node.cli(&["submit", dag.to_str().unwrap()]);
    assert_success(&out, "shoal submit");
    let id = stdout(&out).trim().to_string();
    let view = wait_dag(node, &id, within, "the live node ran the job", |v| v["jobs"]["hello"]["state"] == "done");
    let ran_on = view["jobs"]["hello"]["node"].as_str().unwrap().to_string();
    let (status, body) = node.get(&format!("/v1/dags/{id}/jobs/hello/outputs/out"));
    assert_eq!(status, 200, "the output, fetched by the test's node");
    (id, ran_on, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn the_stick_boots_by_bios_joins_the_mesh_runs_a_job_and_touches_no_other_disk() {
    let Some(image) = built("shoal-live.img") else { return };
    let Some(Site { lab, tap, node, key_hex }) = site("booting the live stick", &[]) else { return };
    let toml = config(&node, &key_hex, "bios", "namespace");
    let stick = stick_with(&lab, &image, "bios", &[("shoal.toml", toml.as_bytes())]);
    let blank = blank_disk(&lab, "blank.img");
    // A disk the owner made the node's store with `shoal live prepare-disk` (here on a file).
    let store = lab.path("store.img");
    std::fs::File::create(&store).unwrap().set_len(256 << 20).unwrap();
    assert_success(&node.cli(&["live", "prepare-disk", store.to_str().unwrap(), "--yes"]), "prepare-disk");

    let boot = Boot {
        extra_disks: vec![blank.clone(), store.clone()],
        ..Boot::stick("bios", Firmware::Bios, &stick, Some(&tap))
    };
    let mut vm = LiveVm::boot(&lab, boot);
    let peer = wait_live_peer(&node, &mut vm, JOIN_TIMEOUT);
    let live_id = peer["node"].as_str().unwrap().to_string();
    assert_eq!(peer["caps"]["labels"]["room"], "bios", "its labels come from shoal.toml: {peer}");

    let (_, ran_on, out) = run_job_on(&node, "bios", "1", "", Duration::from_secs(600));
    assert_eq!(ran_on, live_id, "the job ran on the live node");
    assert!(out.starts_with("hello 1 from x86_64") && out.ends_with("1000\n"), "{out}");

    // The person in the room (and this test) read the status on the console.
    let console = vm.wait_serial(&live_id[..12], SERIAL_TIMEOUT);
    assert!(console.contains("== shoal =="), "the status screen on the serial console:\n{}", tail(&console));
    assert!(console.contains("store     disk sd"), "the store on the SHOAL-STORE disk:\n{}", tail(&console));
    vm.power_off();
    assert_untouched(&blank);
    // The node's key was kept on the stick's SHOAL partition, where the next boot finds it.
    assert!(read_from_stick(&stick, "node.key").is_some(), "node.key on the SHOAL partition");
}

/// The date a year before now, as `-rtc base=` takes it: a PC whose CMOS battery died.
fn a_year_ago() -> String {
    let out = Command::new("date").args(["-u", "-d", "1 year ago", "+%Y-%m-%dT%H:%M:%S"]).output().unwrap();
    stdout(&out).trim().to_string()
}

#[test]
fn the_stick_boots_by_uefi_with_its_clock_a_year_off_offers_tcg_microvms_and_keeps_its_peer_id_across_a_reboot() {
    let Some(image) = built("shoal-live.img") else { return };
    if !Path::new("/usr/share/OVMF/OVMF_CODE.fd").is_file() && !require("OVMF is missing: run scripts/setup.sh") {
        return;
    }
    let Some(Site { lab, tap, node, key_hex }) = site("booting the live stick", &[]) else { return };
    let toml = config(&node, &key_hex, "uefi", "microvm");
    let stick = stick_with(&lab, &image, "uefi", &[("shoal.toml", toml.as_bytes())]);
    // No NTP server is reachable from the lab: the node must take the mesh's time.
    let boot = |name| Boot { rtc_base: Some(a_year_ago()), ..Boot::stick(name, Firmware::Uefi, &stick, Some(&tap)) };

    let mut vm = LiveVm::boot(&lab, boot("uefi"));
    let peer = wait_live_peer(&node, &mut vm, JOIN_TIMEOUT);
    let live_id = peer["node"].as_str().unwrap().to_string();
    // A PC without VT-x/AMD-V still offers microVMs, under TCG, and says so.
    assert_eq!(peer["caps"]["microvm"], true, "it can run microVM jobs: {peer}");
    assert_eq!(peer["caps"]["vm_accel"], "tcg", "without VT-x/AMD-V, under TCG: {peer}");
    // Its clock read a year ago; it took the mesh's, and its facts are not refused as from the past
    // or the future: the test's node holds no refusal of it.
    let console = vm.wait_serial("taking the mesh's time", SERIAL_TIMEOUT);
    let peers = node.get_json("/v1/peers");
    assert!(
        peers["refused"].as_array().is_none_or(|r| r.is_empty()),
        "the live node was refused: {peers:#}\n{}",
        tail(&console)
    );
    vm.power_off();

    // The same stick boots again: the same peer id, read from its SHOAL partition.
    let mut vm = LiveVm::boot(&lab, boot("uefi-again"));
    vm.wait_serial(&live_id[..12], JOIN_TIMEOUT);
    let start = Instant::now();
    loop {
        let seen = node.get_json("/v1/peers")["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["node"] == live_id.as_str() && p["last_seen_ms_ago"].as_u64().is_some_and(|ms| ms < 5_000));
        if seen && start.elapsed() > Duration::from_secs(1) {
            break;
        }
        assert!(start.elapsed() < JOIN_TIMEOUT, "the rebooted node did not join again as {live_id}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_cloud_image_takes_its_config_from_a_nocloud_seed_and_joins() {
    let Some(image) = built("shoal-cloud.qcow2") else { return };
    let Some(Site { lab, tap, node, key_hex }) = site("booting the cloud image", &[]) else { return };
    // A cloud's disk: a copy-on-write overlay of the image, as a cloud makes from an imported one.
    let disk = lab.path("cloud.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image.to_str().unwrap(), disk.to_str().unwrap()])
        .output()
        .unwrap();
    assert_success(&out, "qemu-img create");
    // The NoCloud seed a cloud (or `cloud-localds`) attaches: a volume labelled cidata.
    let seed_dir = lab.path("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    std::fs::write(seed_dir.join("user-data"), config(&node, &key_hex, "cloud", "namespace")).unwrap();
    std::fs::write(seed_dir.join("meta-data"), "instance-id: shoal-test-1\nlocal-hostname: worker-1\n").unwrap();
    let seed = lab.path("seed.iso");
    let out = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-o", seed.to_str().unwrap(), "-V", "cidata", "-J", "-r"])
        .arg(&seed_dir)
        .output()
        .expect("xorriso");
    assert_success(&out, "xorriso -as mkisofs");

    let mut vm = LiveVm::boot(
        &lab,
        Boot {
            firmware: Firmware::Bios,
            disk: (&disk, false, "qcow2"),
            extra_disks: vec![seed],
            nic: Some((tap, "virtio-net-pci")),
            rtc_base: None,
            name: "cloud",
        },
    );
    let peer = wait_live_peer(&node, &mut vm, JOIN_TIMEOUT);
    assert_eq!(peer["caps"]["labels"]["room"], "cloud", "its labels come from the user data: {peer}");
    let live_id = peer["node"].as_str().unwrap().to_string();
    let (_, ran_on, _) = run_job_on(&node, "cloud", "1", "", Duration::from_secs(600));
    assert_eq!(ran_on, live_id);
}

#[test]
fn a_bad_configuration_is_one_line_on_the_console_the_node_keeps_retrying_and_no_other_disk_is_touched() {
    let Some(image) = built("shoal-live.img") else { return };
    let Some(Site { lab, tap, node, key_hex: _ }) = site("booting the live stick", &[]) else { return };
    let blank = blank_disk(&lab, "blank.img");

    // An unreadable shoal.toml on a machine without a network.
    let broken = "mesh_key = \"00\"\njoin = [\"/ip4/10.77.0.1/tcp/7171\"\nlabels = 3\n";
    let stick = stick_with(&lab, &image, "broken", &[("shoal.toml", broken.as_bytes())]);
    let boot = Boot { extra_disks: vec![blank.clone()], ..Boot::stick("broken", Firmware::Bios, &stick, None) };
    let mut vm = LiveVm::boot(&lab, boot);
    vm.wait_serial("shoal.toml:3:", SERIAL_TIMEOUT);
    // The page comes after the log line that made it: wait for it, not for the line.
    vm.wait_serial("no network", SERIAL_TIMEOUT);
    // It keeps reading the file again (every 10 s), saying the same each time.
    let start = Instant::now();
    while vm.serial().matches("live: shoal.toml:3:").count() < 2 {
        assert!(start.elapsed() < SERIAL_TIMEOUT, "the file was not read again:\n{}", tail(&vm.serial()));
        std::thread::sleep(Duration::from_millis(500));
    }
    vm.power_off();
    assert_untouched(&blank);

    // A well-formed mesh key that is not the mesh's: the node keeps trying, and says why.
    let wrong = "11".repeat(32);
    let stick =
        stick_with(&lab, &image, "wrongkey", &[("shoal.toml", config(&node, &wrong, "x", "namespace").as_bytes())]);
    let boot = Boot { extra_disks: vec![blank.clone()], ..Boot::stick("wrongkey", Firmware::Bios, &stick, Some(&tap)) };
    let mut vm = LiveVm::boot(&lab, boot);
    vm.wait_serial("mesh key", SERIAL_TIMEOUT);
    assert_eq!(node.live_peers().len(), 1, "a node with another mesh key is not in the mesh");
    vm.power_off();
    assert_untouched(&blank);
}

/// Seconds since `t`, to one decimal.
fn secs(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 10.0).round() / 10.0
}

/// The benchmark behind docs/BENCHMARKS.md's live-image figures (bench/live.sh runs it): the
/// stick booted by SeaBIOS as a USB stick, power-on to joined, the memory the whole machine uses
/// once the node runs (and shoal's own share), and one small job's submit-to-done time on the live node against the same
/// job on a host node (both in the namespace sandbox), medians of 5.
#[test]
#[ignore = "a benchmark: bench/live.sh"]
fn bench_live_stick_figures() {
    let Some(image) = built("shoal-live.img") else { return };
    let Some(Site { lab, tap, node, key_hex }) = site("the live-image benchmark", &["--label", "room=host"]) else {
        return;
    };
    let toml = config(&node, &key_hex, "live", "namespace");
    let stick = stick_with(&lab, &image, "bench", &[("shoal.toml", toml.as_bytes())]);
    let power_on = Instant::now();
    let mut vm = LiveVm::boot(&lab, Boot::stick("bench", Firmware::Bios, &stick, Some(&tap)));
    wait_live_peer(&node, &mut vm, JOIN_TIMEOUT);
    let joined_s = secs(power_on);
    let console = vm.wait_serial("1 peer", SERIAL_TIMEOUT);
    let rc_done = console.lines().find_map(|l| l.split("rc.sysinit done at ").nth(1)).unwrap_or("?").to_string();
    let block = console.rsplit("== shoal ==").find(|b| b.contains("1 peer")).unwrap_or_default();
    let memory = block.lines().find(|l| l.trim_start().starts_with("memory")).unwrap_or("?").trim().to_string();

    let host_ms = median_job_ms(&node, "host");
    let live_ms = median_job_ms(&node, "live");
    let size_mb = std::fs::metadata(&image).unwrap().len() as f64 / 1e6;
    println!("live-image figures:");
    println!("  image                      {size_mb:.0} MB ({})", image.display());
    println!("  power-on -> joined (TCG)   {joined_s} s");
    println!("  rc.sysinit done at         {rc_done}");
    println!("  at join                    {memory}");
    println!(
        "  one job, submit -> done    live {live_ms} ms, host {host_ms} ms: {:.1} x",
        live_ms as f64 / host_ms as f64
    );
}

/// Median of 5 submit-to-done times of a one-job DAG pinned to the node labelled `room` (the
/// test's own node is "host").
fn median_job_ms(node: &MeshNode, room: &str) -> u128 {
    let mut ms: Vec<u128> = (0..5)
        .map(|i| {
            let t = Instant::now();
            // A second or so of shell arithmetic on the host: what the emulated CPU costs shows.
            let work = "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; ";
            let (_, ran_on, out) = run_job_on(node, room, &format!("bench{i}"), work, Duration::from_secs(300));
            assert!(out.ends_with("1000\n"), "{out}");
            assert_eq!(ran_on == node.node, room == "host", "the job ran where its label is");
            t.elapsed().as_millis()
        })
        .collect();
    ms.sort();
    ms[2]
}
