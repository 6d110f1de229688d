//! guest-init's work as PID 1 of the microVM: mount the basics, load the modules, find the
//! disks by serial, read the request, mount the image root, unpack the inputs, run the job in
//! its own namespaces (the same sandbox as the namespace backend, started as `/init __sandbox`),
//! write the reply, power off. It trusts nothing in the request beyond the documented format
//! and its bounds; whatever fails is written to the reply disk if there is one, and to the
//! console either way.
//!
//! Errors here are messages (`Result<_, String>`): PID 1 decides nothing on them but to report
//! them, as `GuestReply::SetupFailed` across the reply disk (the host's `RunError::Setup`).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_sandbox::collect::UnpackError;
use shoal_sandbox::disk::{
    self, DATA_OFFSET, Fault, GuestReply, GuestRequest, GuestTimeline, MODULES_DIR, NET_MODULES_DIR, REPLY_MAGIC,
    REPLY_SERIAL, REQUEST_MAGIC, REQUEST_SERIAL, ROOTFS_SERIAL, Span,
};
use shoal_sandbox::{Captured, InputMount, NamespaceBackend, Request};

use crate::sys;

/// How long PID 1 waits for its disks to appear after loading the block driver.
const DISK_WAIT_MS: u64 = 5_000;
const INPUTS_DIR: &str = "/tmp/in";
const WORK_DIR: &str = "/tmp/work";

/// CLOCK_BOOTTIME in ms: time since the kernel started.
fn boottime_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

/// PID 1. Never returns: the VM powers off (or, on an injected panic, the kernel panics).
pub(crate) fn pid1_main() -> ! {
    let mut timeline = GuestTimeline { init_start_ms: boottime_ms(), ..GuestTimeline::default() };
    let mut reply_dev: Option<File> = None;
    if let Err(message) = pid1(&mut timeline, &mut reply_dev) {
        eprintln!("guest-init: {message}");
        if let Some(dev) = reply_dev.as_mut() {
            timeline.reply_written_ms = boottime_ms();
            let reply = GuestReply::SetupFailed { message, timeline };
            if let Err(e) = write_reply(dev, &reply) {
                eprintln!("guest-init: cannot write the reply: {e}");
            }
        }
    }
    power_off()
}

fn power_off() -> ! {
    nix::unistd::sync();
    step("sync; power off");
    let e = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    eprintln!("guest-init: power off failed: {e:?}");
    // PID 1 exiting panics the kernel, and `panic=-1` with `-no-reboot` ends QEMU.
    std::process::exit(1)
}

fn mount(src: &str, target: &str, fstype: &str, flags: nix::mount::MsFlags, data: Option<&str>) -> Result<(), String> {
    let _ = fs::create_dir_all(target);
    nix::mount::mount(Some(src), target, Some(fstype), flags, data)
        .map_err(|e| format!("mount {fstype} on {target}: {e}"))
}

/// Leaves the initramfs: the kernel's first root cannot be pivoted away from, and the sandbox
/// pivots. Like switch_root(8): the initramfs files are deleted (their memory comes back once
/// this running program, the last user of `/init`, ends), a tmpfs is moved onto `/` and
/// chrooted into. Nothing is copied: the sandbox helper is a fork of this process, not a
/// program started from a file.
fn switch_root() -> Result<(), String> {
    use nix::mount::MsFlags as M;
    mount("tmpfs", "/newroot", "tmpfs", M::MS_NOSUID, Some("mode=0755"))?;
    let _ = fs::remove_file("/init");
    let _ = fs::remove_dir_all(Path::new("/").join(MODULES_DIR));
    let _ = fs::remove_dir_all(Path::new("/").join(NET_MODULES_DIR));
    for d in ["dev", "proc", "sys", "tmp", "rootfs"] {
        fs::create_dir_all(Path::new("/newroot").join(d)).map_err(|e| format!("creating /newroot/{d}: {e}"))?;
    }
    std::env::set_current_dir("/newroot").map_err(|e| format!("chdir /newroot: {e}"))?;
    nix::mount::mount(Some("."), "/", None::<&str>, M::MS_MOVE, None::<&str>)
        .map_err(|e| format!("moving the new root onto /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot into the new root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
}

/// Whether the kernel command line asks for a narrated boot (`shoal.debug`).
static DEBUG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A step of the boot on the console, with the guest clock, when `shoal.debug` is set.
fn step(what: &str) {
    if DEBUG.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("guest-init {:>6} ms: {what}", boottime_ms());
    }
}

fn pid1(timeline: &mut GuestTimeline, reply_dev: &mut Option<File>) -> Result<(), String> {
    use nix::mount::MsFlags as M;
    // The command line says what this VM has (`shoal.net`: a network device) and wants.
    mount("proc", "/proc", "proc", M::MS_NOSUID | M::MS_NODEV | M::MS_NOEXEC, None)?;
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    nix::mount::umount("/proc").map_err(|e| format!("umount /proc: {e}"))?;
    let flag = |f: &str| cmdline.split_whitespace().any(|w| w == f);
    DEBUG.store(flag("shoal.debug"), std::sync::atomic::Ordering::Relaxed);
    let network = flag("shoal.net");
    if DEBUG.load(std::sync::atomic::Ordering::Relaxed) {
        step(&format!("cmdline read (PID 1 since {} ms)", timeline.init_start_ms));
    }
    load_modules(Path::new("/").join(MODULES_DIR).as_path())?;
    if network {
        load_modules(Path::new("/").join(NET_MODULES_DIR).as_path())?;
    }
    step("modules loaded");
    switch_root()?;
    mount("proc", "/proc", "proc", M::MS_NOSUID | M::MS_NODEV | M::MS_NOEXEC, None)?;
    step("root switched");
    mount("devtmpfs", "/dev", "devtmpfs", M::MS_NOSUID, Some("mode=0755"))?;
    mount("sysfs", "/sys", "sysfs", M::MS_NOSUID | M::MS_NODEV | M::MS_NOEXEC, None)?;
    mount("tmpfs", "/tmp", "tmpfs", M::MS_NOSUID | M::MS_NODEV, Some("mode=1777"))?;
    // favordynmods: moving a process into a cgroup (and enabling a controller) then skips an
    // RCU grace period the default mode pays for fast forks (cgroup.procs: 15 -> 7 ms here).
    mount("cgroup2", "/sys/fs/cgroup", "cgroup2", M::MS_NOSUID | M::MS_NODEV | M::MS_NOEXEC, Some("favordynmods"))?;
    let disks = find_disks(&[REQUEST_SERIAL, REPLY_SERIAL, ROOTFS_SERIAL])?;
    step("disks found");
    if network {
        configure_network()?;
        step("network configured");
    }
    let reply = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disks[REPLY_SERIAL])
        .map_err(|e| format!("opening the reply disk: {e}"))?;
    *reply_dev = Some(reply.try_clone().map_err(|e| format!("dup of the reply disk: {e}"))?);
    mount(&disks[ROOTFS_SERIAL].to_string_lossy(), "/rootfs", "squashfs", M::MS_RDONLY | M::MS_NODEV, None)?;
    step("rootfs mounted");
    let mut request_dev = File::open(&disks[REQUEST_SERIAL]).map_err(|e| format!("opening the request disk: {e}"))?;
    if cmdline.split_whitespace().any(|w| w == "shoal.warm") {
        // Booted ahead of demand: the host fills the request disk, then says go on the console.
        step("warm: waiting for a job");
        eprintln!("{}", disk::WARM_READY_MARKER);
        let mut line = String::new();
        io::stdin().read_line(&mut line).map_err(|e| format!("reading the go-ahead: {e}"))?;
        timeline.go_ms = boottime_ms();
        // The kernel read the disk's first blocks when it probed it: drop them.
        sys::flush_block_buffers(&request_dev).map_err(|e| format!("flushing the request disk's buffers: {e}"))?;
        step("warm: go");
    }
    let request_len = request_dev.seek(SeekFrom::End(0)).map_err(|e| format!("sizing the request disk: {e}"))?;
    let json = disk::read_header(&mut request_dev, REQUEST_MAGIC)
        .map_err(|e| format!("request disk: {e}"))?
        .ok_or("the request disk has no request header")?;
    let request: GuestRequest = serde_json::from_slice(&json).map_err(|e| format!("request header: {e}"))?;
    match request.fault {
        Some(Fault::Panic) => {
            eprintln!("guest-init: injected fault: panicking");
            std::process::exit(3)
        }
        Some(Fault::Hang) => loop {
            eprintln!("guest-init: injected fault: hanging");
            std::thread::sleep(Duration::from_secs(3600));
        },
        None => {}
    }
    if request.tar_bytes > request_len.saturating_sub(DATA_OFFSET) {
        return Err(format!("request tar of {} bytes does not fit its disk of {request_len}", request.tar_bytes));
    }
    step("request read");
    let inputs = unpack_inputs(&mut request_dev, &request)?;
    step("inputs unpacked");
    fs::create_dir_all(WORK_DIR).map_err(|e| format!("creating {WORK_DIR}: {e}"))?;

    let job = request.job;
    let stdout_cap = job.limits.stdout_bytes_max;
    let req = Request {
        rootfs: PathBuf::from("/rootfs"),
        argv: job.argv,
        env: job.env,
        workdir: job.workdir,
        uid: job.uid,
        gid: job.gid,
        stdin: request.stdin.then(|| Path::new(INPUTS_DIR).join("stdin")),
        inputs,
        outputs: job.outputs,
        limits: job.limits,
        network: job.network,
        work_dir: PathBuf::from(WORK_DIR),
        host_mounts: Vec::new(),
        pci_devices: Vec::new(),
    };
    let mut reply = reply;
    let reply_len = reply.seek(SeekFrom::End(0)).map_err(|e| format!("sizing the reply disk: {e}"))?;
    let tar_room = reply_len.saturating_sub(DATA_OFFSET).saturating_sub(stdout_cap.saturating_mul(2));
    let mut tar_dev = reply.try_clone().map_err(|e| format!("dup of the reply disk: {e}"))?;
    let sink = move |tar: &mut dyn Read| -> Result<Span, UnpackError> {
        tar_dev.seek(SeekFrom::Start(DATA_OFFSET))?;
        let n = io::copy(&mut tar.take(tar_room), &mut tar_dev)?;
        let mut probe = [0u8; 1];
        if n == tar_room && tar.read(&mut probe)? > 0 {
            return Err(UnpackError::Invalid(format!("output stream larger than the reply disk's {tar_room} bytes")));
        }
        Ok(Span { offset: DATA_OFFSET, len: n })
    };
    let backend = NamespaceBackend::forking_for_one_job();
    timeline.job_start_ms = boottime_ms();
    step("starting the job");
    let raw = backend.run_streaming(&req, sink, None).map_err(|e| e.to_string())?;
    timeline.job_end_ms = boottime_ms();
    step("job finished");
    let (tar, tar_error) = match raw.outputs {
        Ok(span) => (span, None),
        Err(e) => (Span { offset: DATA_OFFSET, len: 0 }, Some(e.to_string())),
    };
    let mut at = DATA_OFFSET + tar.len;
    let mut put = |captured: &Captured| -> Result<Span, String> {
        let len = reply
            .seek(SeekFrom::Start(at))
            .and_then(|_| captured.copy_to(&mut reply))
            .map_err(|e| format!("reply disk: {e}"))?;
        let span = Span { offset: at, len };
        at += span.len;
        Ok(span)
    };
    let stdout = put(&raw.stdout)?;
    let stderr = put(&raw.stderr)?;
    timeline.reply_written_ms = boottime_ms();
    step("stdout and stderr written");
    let message = GuestReply::Ran {
        exit: raw.exit,
        user_ms: raw.user_ms,
        sys_ms: raw.sys_ms,
        peak_memory_bytes: raw.peak_memory_bytes,
        wall_ms: raw.wall_ms,
        tar,
        tar_error,
        stdout,
        stderr,
        timeline: *timeline,
    };
    write_reply(&mut reply, &message).map_err(|e| format!("writing the reply: {e}"))?;
    step("reply written");
    Ok(())
}

/// Writes the reply's header. Its bytes reach the disk with the `sync` of [`power_off`], which
/// every path takes (an fsync here as well cost 7 ms under TCG).
fn write_reply(dev: &mut File, reply: &GuestReply) -> io::Result<()> {
    let json = serde_json::to_vec(reply).map_err(io::Error::other)?;
    disk::write_header(dev, REPLY_MAGIC, &json)
}

/// QEMU's user-mode network, as its built-in DHCP server would hand it out: 10.0.2.15/24 on
/// `eth0` and the default route through 10.0.2.2 (which also reaches the host's loopback); `lo`
/// comes up too. QEMU answers DNS at 10.0.2.3, which the job uses if its image's resolv.conf says so.
fn configure_network() -> Result<(), String> {
    use std::net::Ipv4Addr;
    let deadline = Instant::now() + Duration::from_millis(DISK_WAIT_MS);
    while !Path::new("/sys/class/net/eth0").exists() {
        if Instant::now() >= deadline {
            return Err(format!("the network device eth0 did not appear within {DISK_WAIT_MS} ms"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    shoal_sandbox::sys::loopback_up().map_err(|e| format!("bringing lo up: {e}"))?;
    sys::set_ipv4("eth0", Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(255, 255, 255, 0))
        .map_err(|e| format!("setting eth0's {e}"))?;
    shoal_sandbox::sys::interface_up("eth0").map_err(|e| format!("bringing eth0 up: {e}"))?;
    sys::add_default_route(Ipv4Addr::new(10, 0, 2, 2)).map_err(|e| format!("adding the default route: {e}"))
}

/// Loads every module in `dir`, in name order (the host numbered them in dependency order).
fn load_modules(dir: &Path) -> Result<(), String> {
    let mut files: Vec<PathBuf> =
        fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?.flatten().map(|e| e.path()).collect();
    files.sort();
    for path in files {
        let file = File::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        let params = CString::default();
        match nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(format!("loading {}: {e}", path.display())),
        }
        if DEBUG.load(std::sync::atomic::Ordering::Relaxed) {
            step(&format!("loaded {}", path.display()));
        }
    }
    Ok(())
}

/// `/dev/vdX` of each wanted serial, waiting up to [`DISK_WAIT_MS`] for them to appear.
fn find_disks(wanted: &[&str]) -> Result<BTreeMap<String, PathBuf>, String> {
    let deadline = Instant::now() + Duration::from_millis(DISK_WAIT_MS);
    loop {
        let mut found = BTreeMap::new();
        for entry in fs::read_dir("/sys/block").map_err(|e| format!("reading /sys/block: {e}"))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let serial = fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
            let serial = serial.trim();
            if wanted.contains(&serial) && Path::new("/dev").join(&name).exists() {
                found.insert(serial.to_string(), Path::new("/dev").join(&name));
            }
        }
        if found.len() == wanted.len() {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "disks {:?} did not appear within {DISK_WAIT_MS} ms (found {:?})",
                wanted,
                found.keys().collect::<Vec<_>>()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Unpacks the request's tar into [`INPUTS_DIR`] and checks it holds exactly what it says.
fn unpack_inputs(dev: &mut File, request: &GuestRequest) -> Result<Vec<InputMount>, String> {
    if request.inputs.is_empty() && !request.stdin {
        // Nothing to unpack: the tar code need not run (under TCG its first run costs ~10 ms).
        return Ok(Vec::new());
    }
    fs::create_dir_all(INPUTS_DIR).map_err(|e| format!("creating {INPUTS_DIR}: {e}"))?;
    dev.seek(SeekFrom::Start(DATA_OFFSET)).map_err(|e| format!("request disk: {e}"))?;
    let mut archive = tar::Archive::new(dev.take(request.tar_bytes));
    archive.set_preserve_permissions(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(false);
    // The tar crate refuses entries that would land outside the destination.
    archive.unpack(INPUTS_DIR).map_err(|e| format!("unpacking the inputs: {e}"))?;
    let mut mounts = Vec::new();
    for name in &request.inputs {
        if !shoal_sandbox::collect::valid_name(name) {
            return Err(format!("input name `{name}` is not one plain path component"));
        }
        let host_path = Path::new(INPUTS_DIR).join("input").join(name);
        if fs::symlink_metadata(&host_path).is_err() {
            return Err(format!("input `{name}` is missing from the request"));
        }
        mounts.push(InputMount { name: name.clone(), host_path });
    }
    if request.stdin && !Path::new(INPUTS_DIR).join("stdin").is_file() {
        return Err("stdin is missing from the request".into());
    }
    Ok(mounts)
}
