//! `shoal live run`: the supervisor busybox init respawns on the live system. In order: the
//! configuration (cloud-init user data, else `shoal.toml` on the `SHOAL` partition, then the
//! kernel command line's `shoal.*=` over it; retried every [`CONFIG_RETRY_S`] until usable), the
//! store (the `SHOAL-STORE` partition or a capped tmpfs), the node's identity (kept on the `SHOAL`
//! partition), a network address (waited for, bounded), the clock (SNTP), then `shoal node` as a
//! child, restarted with backoff; all along, the status page on tty1 and the serial console.
//!
//! Every step logs one line on stderr (the console) starting with `live:`.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::clock::{self, ClockState};
use super::cloud;
use super::config::{self, Backend, Config, MeshKey, StoreChoice};
use super::disks::{self, BlockDevice, Role};
use super::screen::{self, Accel, ConfigSource, NodeState, Status, StoreAt};

/// How often the status page is drawn, in seconds.
pub const SCREEN_INTERVAL_S: u64 = 2;
/// How often the configuration is read again, in seconds (a bad one until it is fixed; a good one
/// to restart the node when it changed).
pub const CONFIG_RETRY_S: u64 = 10;
/// How long the node's start waits for a network address, in seconds, before starting anyway.
pub const ADDRESS_WAIT_S: u64 = 60;
/// First and longest pause before the node is started again after it exited, in seconds.
pub const RESTART_BACKOFF_S_MIN: u64 = 1;
pub const RESTART_BACKOFF_S_MAX: u64 = 30;
/// A node that ran this long before it exited is restarted after the shortest pause again, in
/// seconds.
const RESTART_BACKOFF_RESET_S: u64 = 60;
/// How long the node may run with join addresses and no peer before the screen says why that
/// may be, in seconds (a dial to a node with another mesh key fails only after the 10 s upgrade
/// timeout; two rounds of rejoin).
pub const NO_PEER_HINT_S: u64 = 30;
/// The node's HTTP API on the live system (loopback: the screen reads it; nobody else).
pub const HTTP_DEFAULT: &str = "127.0.0.1:7170";
/// Longest line of the node's output kept as "last error", in bytes.
const LAST_ERROR_BYTES_MAX: usize = 512;

/// The flag that makes `shoal node` take the mesh's time when its own is not known: the median of
/// its peers' clocks, and no job claimed before it has heard one.
pub const CLOCK_FROM_MESH_FLAG: Option<&str> = Some("--clock-from-mesh");

/// What `shoal live run` is given.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    /// The live system's root: `/`, or a test directory holding `proc/cmdline`, `sys/`, `dev/`,
    /// `run/shoal/...`, `var/lib/shoal`.
    pub root: PathBuf,
    /// Mount file systems and set the clock (only as root on the live system): without it the
    /// directories under `root` are used as they are, as if mounted, and the clock is only read.
    pub mount: bool,
    /// The node's HTTP API.
    pub http: SocketAddr,
    /// The `shoal` binary the node runs as.
    pub shoal: PathBuf,
    /// EC2-style instance metadata, `http://169.254.169.254`.
    pub metadata_url: String,
}

/// The paths `shoal live run` reads and writes, under its root.
struct Paths {
    cmdline: PathBuf,
    meminfo: PathBuf,
    mounts: PathBuf,
    config_dir: PathBuf,
    cidata_dir: PathBuf,
    store_dir: PathBuf,
    mesh_key: PathBuf,
    dhcp_ntp_dir: PathBuf,
    tty: PathBuf,
    serial: PathBuf,
}

impl Paths {
    fn new(root: &Path) -> Paths {
        Paths {
            cmdline: root.join("proc/cmdline"),
            meminfo: root.join("proc/meminfo"),
            mounts: root.join("proc/mounts"),
            config_dir: root.join("run/shoal/config"),
            cidata_dir: root.join("run/shoal/cidata"),
            store_dir: root.join("var/lib/shoal"),
            mesh_key: root.join("run/shoal/mesh.key"),
            dhcp_ntp_dir: root.join("run/udhcpc"),
            tty: root.join("dev/tty1"),
            serial: root.join("dev/ttyS0"),
        }
    }
}

/// One line on the console.
fn log(line: impl std::fmt::Display) {
    eprintln!("live: {line}");
}

/// A usable configuration and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Loaded {
    config: Config,
    mesh_key: [u8; 32],
    source: ConfigSource,
    overrides: usize,
}

struct Supervisor {
    opts: LiveOptions,
    paths: Paths,
    status: Status,
    /// The stable part of the last page the serial console got.
    serial_shown: String,
    /// The `SHOAL` partition's device, once mounted.
    config_device: Option<String>,
    /// The metadata service's user data: None until asked (once per boot, with an address).
    metadata: Option<Option<String>>,
    /// The node's last ERROR or WARN line, written by the threads reading its output.
    node_error: Arc<Mutex<Option<String>>>,
    /// The node's process id while it runs, for its memory on the page.
    node_pid: Option<u32>,
}

/// `shoal live run`: never returns while things work; an `Err` is a fault of the live system
/// itself (the supervisor's respawn script starts it again).
pub fn run(opts: LiveOptions) -> Result<()> {
    let paths = Paths::new(&opts.root);
    let (mem_total, _) = meminfo(&paths.meminfo);
    let status = Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        hostname: nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default(),
        node_state: NodeState::Waiting,
        node_id: None,
        peers: Vec::new(),
        join_count: 0,
        jobs_running: None,
        jobs_done: None,
        addresses: addresses(),
        mem_available_bytes: 0,
        mem_total_bytes: mem_total,
        shoal_rss_bytes: 0,
        store: StoreAt::Nowhere,
        store_used_bytes: 0,
        store_size_bytes: 0,
        accel: Accel::Tcg,
        config: ConfigSource::None,
        config_overrides: 0,
        clock: None,
        problem: None,
        last_error: None,
    };
    let mut s = Supervisor {
        opts,
        paths,
        status,
        serial_shown: String::new(),
        config_device: None,
        metadata: None,
        node_error: Arc::new(Mutex::new(None)),
        node_pid: None,
    };
    log(format_args!("shoal {} starting (root {})", s.status.version, s.opts.root.display()));
    let mut loaded = loop {
        match s.load_config() {
            Ok(l) => break l,
            Err(problem) => {
                log(&problem);
                s.status.problem = Some(problem);
                s.show_for(Duration::from_secs(CONFIG_RETRY_S));
            }
        }
    };
    s.status.problem = None;
    s.use_config(&loaded);
    s.prepare_store(&loaded.config);
    s.keep_identity();
    s.write_mesh_key(&loaded.mesh_key)?;
    s.wait_for_address();
    let clock_state = s.sync_clock(&loaded.config);
    stop_stale_nodes(&s.paths.mesh_key);
    let mut backoff_s = RESTART_BACKOFF_S_MIN;
    loop {
        let started = Instant::now();
        let outcome = s.run_node(&loaded, &clock_state)?;
        match outcome {
            NodeEnd::ConfigChanged(new) => {
                s.write_mesh_key(&new.mesh_key)?;
                s.use_config(&new);
                loaded = *new;
                backoff_s = RESTART_BACKOFF_S_MIN;
            }
            NodeEnd::Exited(exit) => {
                if started.elapsed() >= Duration::from_secs(RESTART_BACKOFF_RESET_S) {
                    backoff_s = RESTART_BACKOFF_S_MIN;
                }
                log(format_args!("node: exited ({exit}); starting it again in {backoff_s} s"));
                s.status.node_state = NodeState::Restarting { exit, in_s: backoff_s };
                s.show_for(Duration::from_secs(backoff_s));
                backoff_s = (backoff_s * 2).min(RESTART_BACKOFF_S_MAX);
            }
        }
    }
}

enum NodeEnd {
    Exited(String),
    ConfigChanged(Box<Loaded>),
}

impl Supervisor {
    /// Draws the page now and then every [`SCREEN_INTERVAL_S`] until `how_long` has passed.
    fn show_for(&mut self, how_long: Duration) {
        let until = Instant::now() + how_long;
        loop {
            self.draw();
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_secs(SCREEN_INTERVAL_S)));
        }
    }

    /// Refreshes the machine's figures and draws the page on tty1, and on the serial console when
    /// more than the figures changed.
    fn draw(&mut self) {
        self.status.addresses = addresses();
        let (total, available) = meminfo(&self.paths.meminfo);
        self.status.mem_total_bytes = total;
        self.status.mem_available_bytes = available;
        // The real /proc even under --root: these are this machine's processes.
        let node = self.node_pid.map(|pid| Path::new("/proc").join(pid.to_string()).join("status"));
        self.status.shoal_rss_bytes = rss(Path::new("/proc/self/status")) + node.map_or(0, |p| rss(&p));
        if !matches!(self.status.store, StoreAt::Nowhere)
            && let Ok(st) = nix::sys::statvfs::statvfs(&self.paths.store_dir)
        {
            let block = st.fragment_size();
            self.status.store_size_bytes = st.blocks() * block;
            self.status.store_used_bytes = (st.blocks() - st.blocks_free()) * block;
        }
        if let Some(e) = self.node_error.lock().expect("node error lock").clone() {
            self.status.last_error = Some(e);
        }
        let page = screen::render(&self.status);
        // tty1 may be absent (a cloud VM without a display); the serial console is enough there.
        if let Ok(mut tty) = std::fs::OpenOptions::new().append(true).open(&self.paths.tty) {
            let _ = tty.write_all(screen::tty_frame(&page).as_bytes());
        }
        let stable = screen::render_stable(&self.status);
        if stable != self.serial_shown
            && let Ok(mut serial) = std::fs::OpenOptions::new().append(true).open(&self.paths.serial)
        {
            let _ = serial.write_all(screen::serial_block(&page).as_bytes());
            self.serial_shown = stable;
        }
    }

    fn is_mounted(&self, dir: &Path) -> bool {
        let mounts = std::fs::read_to_string(&self.paths.mounts).unwrap_or_default();
        let dir = dir.to_string_lossy();
        mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(dir.as_ref()))
    }

    /// Mounts `dev` at `dir` (made first) unless something is mounted there already. Without
    /// `--mount` (tests), the directory stands for the mounted file system.
    fn mount(&self, dev: &BlockDevice, dir: &Path, fstype: &str, options: &str) -> Result<(), String> {
        if !self.opts.mount || self.is_mounted(dir) {
            return Ok(());
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", fstype, "-o", options])
            .arg(&dev.dev)
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mounting {} ({fstype}) at {} failed: {}",
                dev.name,
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        log(format_args!("mounted {} ({fstype}, {options}) at {}", dev.name, dir.display()));
        Ok(())
    }

    /// The configuration: cloud-init user data (a `cidata` volume, else the metadata service)
    /// over `shoal.toml` on the `SHOAL` partition, the kernel command line over either; or the
    /// one line saying what is wrong and what to do.
    fn load_config(&mut self) -> Result<Loaded, String> {
        let devices = disks::scan(&self.opts.root);
        // The SHOAL partition is mounted whenever there is one: it also keeps node.key.
        let config_dev = disks::find(&devices, Role::Config).cloned();
        if let Some(dev) = &config_dev
            && self.config_device.is_none()
        {
            // `quiet`: FAT cannot hold a file's mode, and without it the kernel refuses the
            // chmod to 0600 that writing node.key does; the masks show its files as private.
            // `flush`: written data goes to the stick at once (sticks get pulled).
            self.mount(dev, &self.paths.config_dir, "vfat", "rw,noatime,flush,quiet,fmask=0177,dmask=0077")
                .map_err(|e| format!("{e}; is the stick's SHOAL partition damaged? write the stick again"))?;
            self.config_device = Some(dev.name.clone());
        }
        let partition = config_dev.as_ref().map(|dev| match std::fs::read(self.paths.config_dir.join("shoal.toml")) {
            Ok(bytes) => String::from_utf8(bytes)
                .map_err(|_| "shoal.toml is not UTF-8 text; save it as UTF-8 (Notepad: Save as, Encoding UTF-8)".to_string()),
            Err(e) => Err(format!(
                "no readable shoal.toml on the SHOAL partition ({}): {e}; copy one there (`shoal live default-config` prints one)",
                dev.name
            )),
        });
        // The metadata service is asked only when the partition's file sets no mesh key (the cloud
        // image ships it so): a stick its owner configured never takes its settings from whoever
        // answers at 169.254.169.254 on a LAN.
        let partition_has_key =
            matches!(&partition, Some(Ok(t)) if config::parse(t).is_ok_and(|c| c.mesh_key != MeshKey::Missing));
        let (name, text, source) = if let Some(dev) = disks::find(&devices, Role::Cidata) {
            let fs = dev.label.as_ref().map_or("iso9660", |l| l.fs.mount_type());
            self.mount(dev, &self.paths.cidata_dir, fs, "ro")?;
            let path = self.paths.cidata_dir.join("user-data");
            let data = std::fs::read_to_string(&path).map_err(|e| {
                format!("the cidata volume ({}) has no readable user-data ({e}); put shoal.toml there", dev.name)
            })?;
            let toml = cloud::shoal_toml_of_user_data(&data)?.to_string();
            ("user-data", toml, ConfigSource::Cidata { device: dev.name.clone() })
        } else if let Some(data) = if partition_has_key { None } else { self.metadata_user_data().flatten() } {
            let toml = cloud::shoal_toml_of_user_data(&data)?.to_string();
            ("user-data", toml, ConfigSource::Metadata)
        } else if let (Some(dev), Some(text)) = (&config_dev, partition) {
            ("shoal.toml", text?, ConfigSource::Partition { device: dev.name.clone() })
        } else {
            ("", String::new(), ConfigSource::None)
        };
        // Shown while the file is wrong too: the person sees which file to fix.
        if source != ConfigSource::None {
            self.status.config = source.clone();
        }
        let overrides = config::cmdline_overrides(&std::fs::read_to_string(&self.paths.cmdline).unwrap_or_default());
        if source == ConfigSource::None && overrides.is_empty() {
            return Err("no configuration: no SHOAL partition, no cidata volume, no cloud user-data and no shoal.* \
                        on the kernel command line; boot from a stick written from the shoal image"
                .into());
        }
        let mut config = config::parse(&text).map_err(|e| format!("{name}:{}:{}: {}", e.line, e.col, e.message))?;
        for (k, v) in &overrides {
            config.apply_override(k, v).map_err(|e| e.to_string())?;
        }
        let source = if source == ConfigSource::None { ConfigSource::CommandLine } else { source };
        let mesh_key = match &config.mesh_key {
            MeshKey::Inline(k) => *k,
            MeshKey::Missing => {
                return Err(format!(
                    "no mesh key: set mesh_key in {} to the 64 hex digits of the mesh's key (the last line of the \
                     key file `shoal mesh init` wrote)",
                    if name.is_empty() { "shoal.toml" } else { name }
                ));
            }
            MeshKey::File(file) => {
                let path = self.paths.config_dir.join(file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    format!("mesh_key_file `{file}`: cannot read it on the SHOAL partition ({e}); copy the mesh key file there")
                })?;
                config::parse_mesh_key_file(&text).map_err(|e| format!("mesh_key_file `{file}`: {e}"))?
            }
        };
        Ok(Loaded { config, mesh_key, source, overrides: overrides.len() })
    }

    /// The metadata service's user data, asked once per boot once this machine has an address.
    fn metadata_user_data(&mut self) -> Option<Option<String>> {
        if self.metadata.is_none() && !addresses().is_empty() {
            let data = match cloud::fetch_metadata_user_data(&self.opts.metadata_url) {
                Ok(d) => d,
                Err(e) => {
                    log(format_args!("cloud metadata: {e:#}"));
                    None
                }
            };
            log(format_args!(
                "cloud metadata: {}",
                if data.is_some() { "user-data found" } else { "none (not a cloud with a metadata service)" }
            ));
            self.metadata = Some(data);
        }
        self.metadata.clone()
    }

    fn use_config(&mut self, l: &Loaded) {
        if let Some(wifi) = &l.config.wifi {
            log(format_args!("wifi: `{}` is set, but this image has no Wi-Fi support yet; use a cable", wifi.ssid));
        }
        self.status.config = l.source.clone();
        self.status.config_overrides = l.overrides;
        self.status.join_count = l.config.join.len();
        self.status.accel = match l.config.backend {
            Backend::Namespace => Accel::Namespace,
            // The decision the node announces (`vm_accel`): a /dev/kvm that exists but cannot run
            // a stock kernel (PVM) is TCG, not KVM.
            Backend::Microvm => match shoal_vm::microvm::Accel::without_probe().0 {
                shoal_vm::microvm::Accel::Kvm => Accel::Kvm,
                shoal_vm::microvm::Accel::Tcg => Accel::Tcg,
            },
        };
        log(format_args!(
            "config: from {:?} with {} kernel command-line override(s); {} join address(es){}, backend {}",
            l.source,
            l.overrides,
            l.config.join.len(),
            if l.config.join.is_empty() { " (peers found by mDNS)" } else { "" },
            l.config.backend.as_str()
        ));
    }

    /// Mounts the `SHOAL-STORE` partition at the store directory, or a tmpfs capped at
    /// `ram_store_max`.
    fn prepare_store(&mut self, config: &Config) {
        let dir = self.paths.store_dir.clone();
        if config.store == StoreChoice::Disk
            && let Some(dev) = disks::find(&disks::scan(&self.opts.root), Role::Store).cloned()
        {
            match self.mount(&dev, &dir, "ext4", "rw,noatime") {
                Ok(()) => {
                    log(format_args!("store: on disk {}", dev.name));
                    self.status.store = StoreAt::Disk { device: dev.name };
                    return;
                }
                Err(e) => log(format_args!("store: {e}; keeping the store in RAM instead")),
            }
        }
        let cap_bytes = config.ram_store_max.bytes(self.status.mem_total_bytes);
        let options = format!("size={cap_bytes},mode=0755");
        let tmpfs = BlockDevice {
            name: "tmpfs".into(),
            dev: PathBuf::from("tmpfs"),
            disk: String::new(),
            size_bytes: 0,
            label: None,
        };
        if let Err(e) = self.mount(&tmpfs, &dir, "tmpfs", &options) {
            log(format_args!("store: {e}; the store is on the root's overlay (RAM, no cap)"));
        }
        log(format_args!("store: in RAM, at most {} MiB", cap_bytes >> 20));
        self.status.store = StoreAt::Ram { cap_bytes };
    }

    /// Keeps the node's identity on the `SHOAL` partition, so a reboot keeps its peer id: the key
    /// is made there on the first boot and copied into the store, where `shoal node` reads it
    /// (FAT has no symlinks, and the node reads `$SHOAL_HOME/node.key`).
    fn keep_identity(&mut self) {
        if self.config_device.is_none() {
            log("identity: no SHOAL partition; the node's key lives in the store (a new peer id each boot in RAM)");
            return;
        }
        let kept = crate::identity::load_or_create(&self.paths.config_dir).and_then(|key| {
            std::fs::create_dir_all(&self.paths.store_dir)?;
            crate::identity::write_private(&self.paths.store_dir.join("node.key"), key.as_bytes())?;
            Ok(crate::identity::node_id(&key))
        });
        match kept {
            Ok(id) => log(format_args!("identity: node {} (node.key on the SHOAL partition)", &id[..16])),
            Err(e) => log(format_args!("identity: {e:#}; the node's key lives in the store instead")),
        }
    }

    fn write_mesh_key(&self, key: &[u8; 32]) -> Result<()> {
        if let Some(dir) = self.paths.mesh_key.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::identity::write_private(&self.paths.mesh_key, crate::mesh::keys::format_psk(key).as_bytes())
            .context("writing the mesh key for the node")
    }

    /// Waits up to [`ADDRESS_WAIT_S`] for an address on some interface, drawing the page.
    fn wait_for_address(&mut self) {
        let start = Instant::now();
        while addresses().is_empty() {
            if start.elapsed() >= Duration::from_secs(ADDRESS_WAIT_S) {
                log(format_args!("network: no address after {ADDRESS_WAIT_S} s; starting the node anyway"));
                return;
            }
            self.show_for(Duration::from_secs(SCREEN_INTERVAL_S));
        }
        log(format_args!("network: {}", describe_addresses(&addresses())));
    }

    /// SNTP: the LAN's servers (from DHCP) first, then the configuration's.
    fn sync_clock(&mut self, config: &Config) -> ClockState {
        let mut servers: Vec<String> = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.paths.dhcp_ntp_dir) {
            for e in entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "ntp")) {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                servers.extend(text.split_whitespace().map(str::to_string));
            }
        }
        servers.extend(config.ntp.iter().cloned());
        let state = clock::sync(&servers, self.opts.mount);
        let line = match &state {
            ClockState::Synced { server, offset_ms } => format!("clock: set from {server} (it was {offset_ms} ms off)"),
            ClockState::NoServer => "clock: no NTP server answered; taking the mesh's time".to_string(),
        };
        log(&line);
        self.status.clock = Some(line.trim_start_matches("clock: ").to_string());
        state
    }

    /// `shoal node`'s arguments for this configuration.
    fn node_args(&self, config: &Config, clock: &ClockState) -> Vec<String> {
        let mut args = vec![
            "node".to_string(),
            "--listen".into(),
            format!("/ip4/0.0.0.0/tcp/{}", config.listen_port),
            "--blobs".into(),
            format!("0.0.0.0:{}", config.blobs_port),
            "--http".into(),
            self.opts.http.to_string(),
            "--mesh-key".into(),
            self.paths.mesh_key.display().to_string(),
            "--backend".into(),
            // The owner's "microvm" keeps every job off this PC's kernel, also those that ask for
            // the namespace sandbox; "namespace" is the owner allowing it.
            match config.backend {
                Backend::Microvm => "microvm-only",
                Backend::Namespace => "namespace",
            }
            .into(),
            "--warm-vms".into(),
            config.warm_vms_for(self.status.mem_total_bytes).to_string(),
        ];
        for j in &config.join {
            args.extend(["--join".into(), j.to_string()]);
        }
        if config.join.is_empty() {
            args.push("--mdns".into());
        }
        for (k, v) in &config.labels {
            args.extend(["--label".into(), format!("{k}={v}")]);
        }
        if config.cores > 0 {
            args.extend(["--cores".into(), config.cores.to_string()]);
        }
        if let config::Amount::Bytes(_) | config::Amount::Percent(_) = config.memory {
            args.extend(["--memory".into(), config.memory.bytes(self.status.mem_total_bytes).to_string()]);
        }
        if *clock == ClockState::NoServer
            && let Some(flag) = CLOCK_FROM_MESH_FLAG
        {
            args.push(flag.into());
        }
        args
    }

    /// Runs the node until it exits or the configuration changes, drawing the page.
    fn run_node(&mut self, l: &Loaded, clock: &ClockState) -> Result<NodeEnd> {
        let args = self.node_args(&l.config, clock);
        log(format_args!("node: starting `shoal {}`", args.join(" ")));
        *self.node_error.lock().expect("node error lock") = None;
        self.status.last_error = None;
        let mut child = NodeChild(
            Command::new(&self.opts.shoal)
                .args(&args)
                .env("SHOAL_HOME", &self.paths.store_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {}", self.opts.shoal.display()))?,
        );
        let child = &mut child.0;
        self.node_pid = Some(child.id());
        for out in [
            child.stdout.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let error = self.node_error.clone();
            std::thread::spawn(move || relay_output(out, &error));
        }
        self.status.node_state = NodeState::Starting;
        let client = crate::client::Client::new(format!("http://{}", self.opts.http), None);
        let started = Instant::now();
        let mut config_read = Instant::now();
        loop {
            if let Some(exit) = child.try_wait()? {
                self.node_pid = None;
                self.status.node_state = NodeState::Waiting;
                return Ok(NodeEnd::Exited(exit.to_string()));
            }
            self.poll_node(&client);
            // A wrong mesh key shows on the node's side only as failed dials (debug level): the
            // page says what to check, as the problem and, when the node said nothing, the last
            // error.
            let hint = if l.config.join.is_empty() {
                format!(
                    "no peer found by mDNS in {NO_PEER_HINT_S} s: is another node on this network, with the same mesh key?"
                )
            } else {
                format!(
                    "no peer reached in {NO_PEER_HINT_S} s: is the mesh key the mesh's, and is the join address right?"
                )
            };
            if self.status.peers.is_empty() && started.elapsed() >= Duration::from_secs(NO_PEER_HINT_S) {
                if self.status.problem.is_none() {
                    self.status.problem = Some(hint.clone());
                }
                if self.node_error.lock().expect("node error lock").is_none() {
                    self.status.last_error = Some(hint);
                }
            } else if !self.status.peers.is_empty() && self.status.problem.as_ref() == Some(&hint) {
                self.status.problem = None;
            }
            if config_read.elapsed() >= Duration::from_secs(CONFIG_RETRY_S) {
                config_read = Instant::now();
                match self.load_config() {
                    Ok(new) if new != *l => {
                        log("config: changed; restarting the node with it");
                        stop(child);
                        return Ok(NodeEnd::ConfigChanged(Box::new(new)));
                    }
                    Ok(_) => {
                        if self
                            .status
                            .problem
                            .as_ref()
                            .is_some_and(|p| p.ends_with("(running with the last good configuration)"))
                        {
                            self.status.problem = None;
                        }
                    }
                    Err(problem) => {
                        self.status.problem = Some(format!("{problem} (running with the last good configuration)"));
                    }
                }
            }
            self.show_for(Duration::from_secs(SCREEN_INTERVAL_S));
        }
    }

    /// Reads the node's state from its HTTP API into the page.
    fn poll_node(&mut self, client: &crate::client::Client) {
        let Ok(health) = client.get_json::<crate::api::Health>("/v1/health") else { return };
        self.status.node_state = NodeState::Running;
        self.status.node_id = Some(health.node);
        if let Ok(peers) = client.get_json::<crate::api::Peers>("/v1/peers") {
            self.status.peers = peers.peers.into_iter().filter(|p| !p.me && p.connected).map(|p| p.hostname).collect();
            // Following the mesh's clock, the node knows better than the boot's SNTP line.
            if peers.clock.from_mesh {
                self.status.clock = Some(peers.clock.summary);
            }
        }
        if let Ok(m) = client.get_json::<crate::api::Metrics>("/v1/metrics") {
            self.status.jobs_running = Some(m.running);
        }
        if let Ok(list) = client.get_json::<crate::api::DagList>("/v1/dags") {
            let done = list.dags.iter().filter_map(|d| d.states.get(&crate::api::JobStatus::Done)).sum();
            self.status.jobs_done = Some(done);
        }
    }
}

/// The node process, stopped when this supervisor leaves `run_node` by an error or a panic: a
/// node left behind would hold the store, and the next supervisor's node could not start.
struct NodeChild(Child);

impl Drop for NodeChild {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            stop(&mut self.0);
        }
    }
}

/// Stops a node an earlier `shoal live run` left running (it was killed, or aborted): one holds
/// the store, and the new node could not start. It is found by its `--mesh-key` argument, which
/// names this live system's own file.
fn stop_stale_nodes(mesh_key: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    let key = mesh_key.as_os_str().as_encoded_bytes();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_ours =
            args.get(1) == Some(&&b"node"[..]) && args.windows(2).any(|w| w[0] == b"--mesh-key" && w[1] == key);
        if !is_ours {
            continue;
        }
        log(format_args!("node: stopping process {pid}, a node an earlier `shoal live run` left running"));
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while nix::sys::signal::kill(pid, None).is_ok() {
            if start.elapsed() >= Duration::from_secs(STOP_GRACE_S) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// How long a node may take to stop after SIGTERM before it is killed, in seconds.
const STOP_GRACE_S: u64 = 10;

/// Stops the node (SIGTERM, then SIGKILL after 10 s) and reaps it.
fn stop(child: &mut Child) {
    let Ok(pid) = i32::try_from(child.id()) else { return };
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(STOP_GRACE_S) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Copies the node's output to the console line by line, keeping its last ERROR or WARN line.
fn relay_output(out: Box<dyn std::io::Read + Send>, error: &Mutex<Option<String>>) {
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { return };
        eprintln!("{line}");
        if let Some(e) = error_of_log_line(&line) {
            *error.lock().expect("node error lock") = Some(e);
        }
    }
}

/// The level and message of a tracing ERROR or WARN line, ANSI colours and time stamp removed:
/// `2026-12-06T10:00:00.000Z  WARN shoal_node::mesh::net: refused ...` -> `WARN refused ...`.
pub fn error_of_log_line(line: &str) -> Option<String> {
    let plain = strip_ansi(line);
    let mut words = plain.split_whitespace().peekable();
    // A time stamp first, if any.
    if words.peek().is_some_and(|w| w.len() > 10 && w.as_bytes()[4] == b'-' && w.contains('T')) {
        words.next();
    }
    let level = words.next()?;
    if level != "ERROR" && level != "WARN" {
        return None;
    }
    let rest: Vec<&str> = words.collect();
    // The target (`shoal_node::mesh::net:`) and spans (`node{id=..}:`) end in a colon.
    // A crate root target (`libp2p_swarm:`) has no `::`; a module name has an underscore.
    let is_target = |w: &&&str| {
        let name = w.trim_end_matches(':');
        w.ends_with(':')
            && (w.contains("::")
                || w.contains('{')
                || (name.contains('_')
                    && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')))
    };
    let skip = rest.iter().take_while(is_target).count();
    // Warnings of the libraries under the node (libp2p's "no known peers" at every start) are
    // its own business; the node's own warnings and every error are the person's.
    let target = rest[..skip].iter().rev().find(|w| !w.contains('{'));
    if level == "WARN" && target.is_some_and(|t| !t.starts_with("shoal")) {
        return None;
    }
    let mut message = format!("{level} {}", rest[skip..].join(" "));
    if message.len() > LAST_ERROR_BYTES_MAX {
        let cut = (0..=LAST_ERROR_BYTES_MAX).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
        message.truncate(cut);
    }
    Some(message)
}

/// The text without ANSI escape sequences (CSI `ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Total and available memory from `/proc/meminfo`, in bytes (0 when unreadable).
fn meminfo(path: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("MemTotal"), field("MemAvailable"))
}

/// A process's resident memory (`VmRSS` of /proc/PID/status), in bytes; 0 when unreadable.
fn rss(status: &Path) -> u64 {
    let text = std::fs::read_to_string(status).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Each interface's addresses, loopback and IPv6 link-local left out (no use to a peer), in
/// interface order.
fn addresses() -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return out };
    for a in addrs {
        let (Some(addr), mask) = (a.address, a.netmask) else { continue };
        let text = if let Some(v4) = addr.as_sockaddr_in() {
            if v4.ip().is_loopback() {
                continue;
            }
            let prefix = mask.and_then(|m| m.as_sockaddr_in().map(|m| m.ip().to_bits().count_ones())).unwrap_or(32);
            format!("{}/{prefix}", v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let ip = v6.ip();
            if ip.is_loopback() || (ip.segments()[0] & 0xffc0) == 0xfe80 {
                continue;
            }
            let prefix = mask.and_then(|m| m.as_sockaddr_in6().map(|m| m.ip().to_bits().count_ones())).unwrap_or(128);
            format!("{ip}/{prefix}")
        } else {
            continue;
        };
        match out.iter_mut().find(|(name, _)| *name == a.interface_name) {
            Some((_, list)) => list.push(text),
            None => out.push((a.interface_name, vec![text])),
        }
    }
    out
}

fn describe_addresses(addrs: &[(String, Vec<String>)]) -> String {
    addrs.iter().map(|(i, a)| format!("{i} {}", a.join(" "))).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_error_lines_are_kept_plain() {
        let check =
            |line: &str, expected: Option<&str>| assert_eq!(error_of_log_line(line).as_deref(), expected, "{line:?}");
        check(
            "\x1b[2m2026-12-06T10:00:00.123456Z\x1b[0m \x1b[33m WARN\x1b[0m \x1b[2mshoal_node::mesh::net\x1b[0m\x1b[2m:\x1b[0m refused a connection: protocol 3",
            Some("WARN refused a connection: protocol 3"),
        );
        check(
            "2026-12-06T10:00:00Z ERROR node{id=5e3a}: shoal_node::daemon: the store is full",
            Some("ERROR the store is full"),
        );
        check("ERROR plain", Some("ERROR plain"));
        check(
            "2026-12-06T17:08:37.627638Z  WARN libp2p_kad::behaviour: Failed to trigger bootstrap: No known peers.",
            None,
        );
        check("2026-12-06T17:08:37Z ERROR libp2p_swarm: listener failed", Some("ERROR listener failed"));
        check("2026-12-06T10:00:00Z  INFO shoal_node: listening", None);
        check("error: cannot start", None);
        check("", None);
        assert!(error_of_log_line(&format!("WARN {}", "é".repeat(600))).unwrap().len() <= LAST_ERROR_BYTES_MAX);
    }

    #[test]
    fn meminfo_is_read_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meminfo");
        std::fs::write(&p, "MemTotal:        2048000 kB\nMemFree:  1 kB\nMemAvailable:    1024000 kB\n").unwrap();
        assert_eq!(meminfo(&p), (2048000 * 1024, 1024000 * 1024));
        assert_eq!(meminfo(&dir.path().join("absent")), (0, 0));
        std::fs::write(dir.path().join("status"), "Name:\tshoal\nVmPeak:\t  900 kB\nVmRSS:\t   56320 kB\n").unwrap();
        assert_eq!(rss(&dir.path().join("status")), 56320 * 1024);
        assert!(rss(Path::new("/proc/self/status")) > 0, "this test's own resident memory");
    }
}
