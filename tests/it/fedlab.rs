//! The federation lab (issue 19): sites behind NAT routers, a public network with relays on it, and
//! WAN links with delay, jitter, loss and a rate, every host its own network namespace. The tests
//! of nodes at several sites (`federation.rs`) and `bench/netlab.sh` build on it.
//!
//! # The address plan
//! - **public**: namespace `<lab>-pub` holds the bridge `pub0` (198.18.0.1/24, the RFC 2544
//!   benchmarking range). [`Fed::public_host`] adds a host with `eth0` on it at 198.18.0.10, .11, ...
//!   (at most [`PUBLIC_HOSTS_MAX`]); public hosts have no default route: the /24 is their world.
//! - **site** `s` (1, 2, ... in the order [`Fed::site`] made them): a router namespace `<lab>-<site>`
//!   holding the LAN bridge `lan0` (10.s.0.1/24) and the TAP `wan` (198.18.0.(100+s)/24).
//!   [`Site::host`] adds a host with `eth0` at 10.s.0.10, .11, ... and its default route via
//!   10.s.0.1 (at most [`SITE_HOSTS_MAX`]).
//! - **NAT** (nftables, table `ip shoal_nat` in the router): what leaves by `wan` is masqueraded,
//!   keeping its source port where it can ([`Nat::Eim`], endpoint-independent: hole punching works)
//!   or with a random port per connection ([`Nat::Symmetric`], `random,fully-random`: it does not);
//!   a packet in by `wan` that opens no tracked connection (`ct state new, invalid`) is dropped on
//!   input and forward, as a home router does, so an unsolicited SYN gets no RST (which would end
//!   every TCP hole punch).
//! - **the WAN link**: `wan` and a TAP `w<s>` on `pub0` are joined by the test process, one thread
//!   per direction reading frames from one TAP and writing them to the other after the [`Link`]'s
//!   delay ± jitter, in order (a frame never leaves before the one ahead of it), dropping a frame
//!   with the link's loss probability. Loss lives in the queue rather than in an nft `numgen` rule:
//!   it is then per direction and fractional (0.5 %), and the router's rule set stays what a real
//!   router's is. The rate is `tc tbf` on the egress of both TAPs (the kernel here has no
//!   `sch_netem`, nor fq_codel, prio or sfq; tbf works).
//!
//! Namespaces are named `shoal-fed-<pid>-<n>-<role>` (role: `pub`, a site's or a host's name).
//! [`Host::command`] makes a `Command` that enters the host's namespace between fork and exec (and
//! carries `SHOAL_FEDLAB=<namespace>` in its environment, which scripts/test.sh looks for);
//! [`Host::run`] runs a closure on a thread inside it (a socket, an HTTP request to a node on the
//! host's own loopback). Dropping the [`Fed`] kills every process in its namespaces, whoever started
//! it, stops the links (their TAPs vanish with their file descriptors) and deletes the namespaces,
//! also when the test panics; a lab whose test process died without dropping it is removed by the
//! next [`Fed::new`].

// An API for the federation tests and benches: not every test uses all of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sched::{CloneFlags, setns};
use nix::sys::time::TimeSpec;

/// Every lab's namespaces start with this (scripts/test.sh fails if one outlives the tests).
pub const NETNS_PREFIX: &str = "shoal-fed-";
/// Set in the environment of every process [`Host::command`] makes, to the host's namespace.
pub const ENV_MARK: &str = "SHOAL_FEDLAB";
/// Hosts on the public bridge: 198.18.0.10 to .99.
pub const PUBLIC_HOSTS_MAX: u8 = 90;
/// Sites of one lab: routers at 198.18.0.101 to .254, LANs 10.1.0.0/24 to 10.154.0.0/24.
pub const SITES_MAX: u8 = 154;
/// Hosts on one site's LAN: 10.s.0.10 to 10.s.0.253.
pub const SITE_HOSTS_MAX: u8 = 244;
/// Frames a link direction holds in flight; past it a frame is dropped, as a router's full queue
/// drops it. 100 Mbit/s for 300 ms is about 2,500 full frames.
pub const LINK_QUEUE_FRAMES_MAX: usize = 8192;
/// Bytes a link direction holds in flight (100 Mbit/s for 300 ms is 3.75 MB).
pub const LINK_QUEUE_BYTES_MAX: usize = 8 << 20;
/// The largest frame a TAP hands over (the links carry MTU 1500 frames; the TAPs have no
/// offloads, so the kernel segments before them).
const FRAME_BYTES_MAX: usize = 65_536;
/// Names of sites and hosts: lowercase letters, digits and `-`, this long at most.
const NAME_BYTES_MAX: usize = 24;

/// The public side of a site's router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Endpoint-independent mapping (nft `masquerade`): a LAN address and port keep one public
    /// port, the LAN port where it is free, whatever the destination. Hole punching works.
    Eim,
    /// A new public port per connection (`masquerade random,fully-random`): the port a peer saw
    /// for one destination is not the one another destination sees. Hole punching fails.
    Symmetric,
}

/// What a site's WAN link does to the frames crossing it, in each direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// One-way delay, ms.
    pub delay_ms: u32,
    /// The delay varies uniformly by up to this much either way, ms (frames stay in order).
    pub jitter_ms: u32,
    /// Chance that a frame is dropped, per direction, in percent (0.0 to 100.0).
    pub loss_pct: f64,
    /// The rate each way, Mbit/s; 0 is no limit but the lab's own speed.
    pub rate_mbit: u32,
}

impl Link {
    /// No delay, no loss, no limit.
    pub const CLEAN: Link = Link { delay_ms: 0, jitter_ms: 0, loss_pct: 0.0, rate_mbit: 0 };

    fn check(&self, site: &str) -> Result<()> {
        let mut problems = Vec::new();
        if !(0.0..=100.0).contains(&self.loss_pct) {
            problems.push(format!("loss_pct {} is not a percentage: give 0.0 to 100.0", self.loss_pct));
        }
        if self.jitter_ms > self.delay_ms {
            problems.push(format!(
                "jitter_ms {} exceeds delay_ms {}: a frame cannot leave before it came; give jitter_ms <= delay_ms",
                self.jitter_ms, self.delay_ms
            ));
        }
        if self.delay_ms > 10_000 {
            problems.push(format!("delay_ms {} is over 10 s: give at most 10000", self.delay_ms));
        }
        ensure!(problems.is_empty(), "the link of site {site}: {}", problems.join("; "));
        Ok(())
    }
}

/// A network lab of sites and public hosts (see the module doc).
pub struct Fed {
    inner: Arc<Inner>,
}

struct Inner {
    /// `shoal-fed-<pid>-<n>`: every namespace of this lab starts with it.
    id: String,
    public: Arc<Ns>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Site and host names in use (each names a namespace).
    names: BTreeSet<String>,
    /// Every namespace made, in order (deleted in reverse).
    namespaces: Vec<Arc<Ns>>,
    public_hosts: u8,
    sites: u8,
    /// Each site's WAN link, by site index.
    links: BTreeMap<u8, WanLink>,
}

/// A named network namespace and a descriptor of it (for `setns`).
struct Ns {
    name: String,
    fd: File,
}

impl Ns {
    fn add(name: String) -> Result<Ns> {
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let fd = File::open(Path::new("/run/netns").join(&name))
            .with_context(|| format!("opening the new namespace /run/netns/{name}"))?;
        Ok(Ns { name, fd })
    }

    /// `program` run inside this namespace (entered between fork and exec).
    fn command(self: &Arc<Ns>, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env(ENV_MARK, &self.name);
        let ns = self.clone();
        // SAFETY: between fork and exec the hook only calls setns(2), which is async-signal-safe,
        // on the descriptor of `ns`, which the closure holds open (close-on-exec, so the program
        // does not inherit it) for as long as the Command lives.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.fd.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        cmd
    }

    /// Runs `f` on a new thread inside this namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(&self.fd, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("entering namespace {}: {e}", self.name));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// `ip` commands (one a line, `ip -batch` syntax) inside this namespace.
    fn ip(&self, lines: &[String]) -> Result<()> {
        run_stdin(Command::new("ip").args(["-n", &self.name, "-batch", "-"]), &lines.join("\n"))
    }

    fn nft(self: &Arc<Ns>, rules: &str) -> Result<()> {
        run_stdin(self.command("nft").args(["-f", "-"]), rules)
            .with_context(|| format!("nft in namespace {}", self.name))
    }

    fn inode(&self) -> u64 {
        self.fd.metadata().map(|m| m.ino()).unwrap_or(0)
    }
}

/// A site: a router with a LAN behind it and its WAN link to the public bridge.
#[derive(Clone)]
pub struct Site {
    inner: Arc<Inner>,
    pub name: String,
    /// `s` of the address plan: LAN 10.s.0.0/24, WAN 198.18.0.(100+s).
    pub index: u8,
    pub nat: Nat,
    pub link: Link,
    router: Arc<Ns>,
    hosts: Arc<AtomicU32>,
}

/// A host: a namespace of its own (its own loopback too) with one interface, `eth0`.
#[derive(Clone)]
pub struct Host {
    pub name: String,
    /// The site it is on; `None` on the public bridge.
    pub site: Option<String>,
    ip: Ipv4Addr,
    ns: Arc<Ns>,
}

/// A process started in the lab, killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// kill -9, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What `ping` measured.
#[derive(Clone, Copy, Debug)]
pub struct PingStats {
    pub sent: u32,
    pub received: u32,
    /// Round-trip times of the replies, ms (0 when none came back).
    pub rtt_min_ms: f64,
    pub rtt_avg_ms: f64,
}

/// Whether this machine can build a lab (root, `ip`, `nft`, `tc`, /dev/net/tun); the lab, or
/// `None` after printing `skipped: ...`. With `SHOAL_REQUIRE_NETLAB=1` (CI) it panics instead.
pub fn fed_or_skip(what: &str) -> Option<Fed> {
    match Fed::new() {
        Ok(fed) => Some(fed),
        Err(why) => {
            let why = format!("{what} needs the federation lab (tests/it/fedlab.rs): {why:#}");
            if std::env::var("SHOAL_REQUIRE_NETLAB").as_deref() == Ok("1") {
                panic!("SHOAL_REQUIRE_NETLAB=1 and {why}");
            }
            eprintln!("skipped: {why}");
            None
        }
    }
}

impl Fed {
    /// A lab with its public bridge and nothing on it yet. Removes the labs of dead test
    /// processes first.
    pub fn new() -> Result<Fed> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        ensure!(nix::unistd::geteuid().is_root(), "it runs as root (network namespaces, nftables)");
        for (tool, package) in [("ip", "iproute2"), ("tc", "iproute2"), ("nft", "nftables")] {
            let ok = Command::new(tool).arg("-V").output().is_ok_and(|o| o.status.success());
            ensure!(ok, "`{tool}` is missing: install {package} (scripts/setup.sh does)");
        }
        File::options()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .context("/dev/net/tun (the WAN links are TAP devices): load the tun module")?;
        remove_orphans();
        let id = format!("{NETNS_PREFIX}{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let public = Arc::new(Ns::add(format!("{id}-pub"))?);
        let fed = Fed {
            inner: Arc::new(Inner {
                id,
                public: public.clone(),
                state: Mutex::new(State { namespaces: vec![public.clone()], ..State::default() }),
            }),
        };
        public.ip(&[
            "link set lo up".into(),
            "link add pub0 type bridge".into(),
            "addr add 198.18.0.1/24 dev pub0".into(),
            "link set pub0 up".into(),
        ])?;
        Ok(fed)
    }

    /// The lab's id, `shoal-fed-<pid>-<n>`, which starts the name of each of its namespaces.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// A host on the public bridge (a relay, an echo server): 198.18.0.10, .11, ...
    pub fn public_host(&self, name: &str) -> Result<Host> {
        let n = {
            let mut st = self.inner.state.lock().unwrap();
            ensure!(
                st.public_hosts < PUBLIC_HOSTS_MAX,
                "public host {name}: the lab has {PUBLIC_HOSTS_MAX} already, the most the address plan holds"
            );
            claim_name(&mut st, name)?;
            st.public_hosts += 1;
            st.public_hosts - 1
        };
        let ip = Ipv4Addr::new(198, 18, 0, 10 + n);
        self.inner.add_host(name, None, ip, &self.inner.public, &format!("p{n}"), "pub0", None)
    }

    /// A site: a router (`nat`) with an empty LAN, and its WAN link (`link`) to the public bridge.
    pub fn site(&self, name: &str, nat: Nat, link: Link) -> Result<Site> {
        link.check(name)?;
        let index = {
            let mut st = self.inner.state.lock().unwrap();
            ensure!(
                st.sites < SITES_MAX,
                "site {name}: the lab has {SITES_MAX} already, the most the address plan holds"
            );
            claim_name(&mut st, name)?;
            st.sites += 1;
            st.sites
        };
        let router = Arc::new(Ns::add(format!("{}-{name}", self.inner.id))?);
        self.inner.state.lock().unwrap().namespaces.push(router.clone());
        let wan_ip = Ipv4Addr::new(198, 18, 0, 100 + index);
        let ctx = || format!("building site {name}'s router ({})", router.name);
        router
            .ip(&[
                "link set lo up".into(),
                "link add lan0 type bridge".into(),
                format!("addr add 10.{index}.0.1/24 dev lan0"),
                "link set lan0 up".into(),
            ])
            .with_context(ctx)?;
        router.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")).context("net.ipv4.ip_forward=1")?;
        let masquerade = match nat {
            Nat::Eim => "masquerade",
            Nat::Symmetric => "masquerade random,fully-random",
        };
        router
            .nft(&format!(
                "table ip shoal_nat {{\n\
                   chain input {{ type filter hook input priority filter; policy accept;\n\
                     iifname \"wan\" ct state {{ new, invalid }} drop; }}\n\
                   chain forward {{ type filter hook forward priority filter; policy accept;\n\
                     iifname \"wan\" ct state {{ new, invalid }} drop; }}\n\
                   chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n\
                     oifname \"wan\" {masquerade}; }}\n\
                 }}\n"
            ))
            .with_context(ctx)?;
        // The TAPs: `wan` in the router, `w<s>` on the public bridge.
        let wan = router.run(|| open_tap("wan")).with_context(ctx)?;
        let public_tap = format!("w{index}");
        let public_end = self.inner.public.run(|| open_tap(&public_tap)).with_context(ctx)?;
        router.ip(&[format!("addr add {wan_ip}/24 dev wan"), "link set wan up".into()]).with_context(ctx)?;
        self.inner
            .public
            .ip(&[format!("link set {public_tap} master pub0"), format!("link set {public_tap} up")])
            .with_context(ctx)?;
        if link.rate_mbit > 0 {
            // 4 ms of the rate as the bucket (at least two full frames): tbf's timer is a
            // hrtimer, so a small bucket costs no throughput; the queue holds 100 ms of it.
            let burst_bytes = (u64::from(link.rate_mbit) * 1_000_000 / 8 / 250).max(3028);
            let tbf = |dev: &str| {
                format!(
                    "qdisc replace dev {dev} root tbf rate {}mbit burst {burst_bytes} latency 100ms",
                    link.rate_mbit
                )
            };
            run(Command::new("tc").args(["-n", &router.name]).args(tbf("wan").split(' ')))
                .and_then(|()| {
                    run(Command::new("tc").args(["-n", &self.inner.public.name]).args(tbf(&public_tap).split(' ')))
                })
                .with_context(ctx)?;
        }
        let wan_link = WanLink::start(&format!("{}:{name}", self.inner.id), wan, public_end, link)?;
        self.inner.state.lock().unwrap().links.insert(index, wan_link);
        Ok(Site {
            inner: self.inner.clone(),
            name: name.to_string(),
            index,
            nat,
            link,
            router,
            hosts: Arc::new(AtomicU32::new(0)),
        })
    }

    /// Drops every packet in and out of the site's WAN (nft on its router) until [`Fed::heal`]:
    /// the site is cut off; what its hosts say to each other still flows.
    pub fn cut(&self, site: &Site) -> Result<()> {
        site.router.nft(
            "table ip shoal_cut {\n\
               chain pre { type filter hook prerouting priority -400; policy accept; iifname \"wan\" drop; }\n\
               chain post { type filter hook postrouting priority 400; policy accept; oifname \"wan\" drop; }\n\
             }\n",
        )
    }

    /// Ends a [`Fed::cut`]. The router's NAT mappings that did not time out meanwhile hold again.
    pub fn heal(&self, site: &Site) -> Result<()> {
        site.router.nft("delete table ip shoal_cut\n")
    }

    /// `cmd` spawned, killed when the returned [`Proc`] is dropped (and when the lab is, whatever
    /// holds it).
    pub fn spawn(&self, cmd: &mut Command) -> Result<Proc> {
        let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        Ok(Proc { child })
    }

    /// `count` pings from `from` to `to`, `interval_ms` apart (each waits up to 2 s for its reply).
    /// `to` must be reachable from `from`: a public host, a host on the same site, `from`'s router.
    pub fn ping(&self, from: &Host, to: &Host, count: u32, interval_ms: u32) -> Result<PingStats> {
        let out = from
            .command("ping")
            .args(["-n", "-q", "-W", "2", "-c", &count.to_string()])
            .args(["-i", &format!("{:.3}", f64::from(interval_ms) / 1000.0)])
            .arg(to.ip.to_string())
            .stdin(Stdio::null())
            .output()
            .context("ping (install iputils-ping: scripts/setup.sh does)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_ping(&text).with_context(|| format!("ping {} from {}: {text}", to.name, from.name))
    }

    /// The mean round trip from `from` to `to`, ms, over 5 pings (an error if none came back).
    pub fn ping_rtt_ms(&self, from: &Host, to: &Host) -> Result<f64> {
        let stats = self.ping(from, to, 5, 200)?;
        ensure!(stats.received > 0, "ping {} from {}: no reply of {}", to.name, from.name, stats.sent);
        Ok(stats.rtt_avg_ms)
    }

    /// The frames the site's WAN link carried and dropped so far, each way.
    pub fn link_stats(&self, site: &Site) -> LinkStats {
        self.inner.state.lock().unwrap().links.get(&site.index).map(WanLink::stats).unwrap_or_default()
    }
}

impl Site {
    /// A host on this site's LAN: 10.s.0.10, .11, ..., its default route via the router.
    pub fn host(&self, name: &str) -> Result<Host> {
        claim_name(&mut self.inner.state.lock().unwrap(), name)?;
        let n = self.hosts.fetch_add(1, Ordering::Relaxed);
        ensure!(
            n < u32::from(SITE_HOSTS_MAX),
            "host {name}: site {} has {SITE_HOSTS_MAX} hosts already, the most its /24 holds",
            self.name
        );
        let ip = Ipv4Addr::new(10, self.index, 0, 10 + n as u8);
        let gateway = Ipv4Addr::new(10, self.index, 0, 1);
        self.inner.add_host(name, Some(&self.name), ip, &self.router, &format!("h{n}"), "lan0", Some(gateway))
    }

    /// The router's public address, 198.18.0.(100+s): what the world sees of this site's hosts.
    pub fn wan_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 100 + self.index)
    }

    /// The router's namespace name (for `ip -n`, `nft` through `ip netns exec` by hand).
    pub fn router_netns(&self) -> &str {
        &self.router.name
    }
}

impl Host {
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The host's namespace name.
    pub fn netns(&self) -> &str {
        &self.ns.name
    }

    /// `program` to be run in this host's namespace (see the module doc). Spawn it with
    /// [`Fed::spawn`], or keep the `Child`: the lab kills it anyway when it is dropped.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.ns.command(program)
    }

    /// Runs `f` on a thread inside this host's namespace: its sockets are the host's.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns.run(f)
    }
}

impl Inner {
    /// A host namespace with `eth0` (`ip`/24), its veth peer `port` enslaved to `bridge` in `on`.
    #[allow(clippy::too_many_arguments)]
    fn add_host(
        &self,
        name: &str,
        site: Option<&str>,
        ip: Ipv4Addr,
        on: &Ns,
        port: &str,
        bridge: &str,
        gateway: Option<Ipv4Addr>,
    ) -> Result<Host> {
        let ns = Arc::new(Ns::add(format!("{}-{name}", self.id))?);
        self.state.lock().unwrap().namespaces.push(ns.clone());
        let ctx = || format!("building host {name} ({})", ns.name);
        run(Command::new("ip")
            .args(["link", "add", "name", "eth0", "netns", &ns.name, "type", "veth"])
            .args(["peer", "name", port, "netns", &on.name]))
        .with_context(ctx)?;
        on.ip(&[format!("link set {port} master {bridge}"), format!("link set {port} up")]).with_context(ctx)?;
        let mut lines =
            vec!["link set lo up".to_string(), format!("addr add {ip}/24 dev eth0"), "link set eth0 up".into()];
        if let Some(gw) = gateway {
            lines.push(format!("route add default via {gw}"));
        }
        ns.ip(&lines).with_context(ctx)?;
        Ok(Host { name: name.to_string(), site: site.map(str::to_string), ip, ns })
    }
}

fn claim_name(st: &mut State, name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= NAME_BYTES_MAX
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "lab name {name:?}: use 1 to {NAME_BYTES_MAX} lowercase letters, digits or '-'"
    );
    ensure!(name != "pub", "lab name \"pub\" is the public bridge's namespace: pick another");
    ensure!(
        st.names.insert(name.to_string()),
        "lab name {name:?} is taken in this lab: names of sites and hosts are unique"
    );
    Ok(())
}

impl Drop for Fed {
    fn drop(&mut self) {
        let (namespaces, links) = {
            let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
            (std::mem::take(&mut st.namespaces), std::mem::take(&mut st.links))
        };
        kill_in(&namespaces.iter().map(|n| n.inode()).collect());
        drop(links);
        for ns in namespaces.iter().rev() {
            let _ = run(Command::new("ip").args(["netns", "del", &ns.name]));
        }
    }
}

/// SIGKILLs every process whose network namespace is one of `inodes`, and waits (up to 5 s) until
/// none is left in them.
fn kill_in(inodes: &BTreeSet<u64>) {
    let me = std::process::id();
    let in_lab = || -> Vec<i32> {
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid as u32 != me)
            .filter(|pid| std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| inodes.contains(&m.ino())))
            .collect()
    };
    let start = Instant::now();
    loop {
        let pids = in_lab();
        if pids.is_empty() || start.elapsed() > Duration::from_secs(5) {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        // Our own children stay as zombies until reaped, but a zombie has left its namespace.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deletes the labs of test processes that are gone (killed by a timeout: no Drop ran), and kills
/// what still runs in them.
fn remove_orphans() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else { return };
    let mut orphans = Vec::new();
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(NETNS_PREFIX).and_then(|r| r.split('-').next()) else { continue };
        if !Path::new("/proc").join(pid).exists() {
            orphans.push((name, e.metadata().map(|m| m.ino()).unwrap_or(0)));
        }
    }
    if orphans.is_empty() {
        return;
    }
    // The inode of a bind-mounted namespace file is the namespace's own.
    let inodes = orphans
        .iter()
        .filter_map(|(name, _)| std::fs::metadata(Path::new("/run/netns").join(name)).ok().map(|m| m.ino()))
        .collect();
    kill_in(&inodes);
    for (name, _) in orphans {
        let _ = run(Command::new("ip").args(["netns", "del", &name]));
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

fn run_stdin(cmd: &mut Command, input: &str) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{cmd:?} with input\n{input}\nfailed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn parse_ping(text: &str) -> Result<PingStats> {
    // "5 packets transmitted, 4 received, 20% packet loss, time 803ms"
    // "rtt min/avg/max/mdev = 80.1/81.2/83.0/1.1 ms" (absent when nothing came back)
    let line = text.lines().find(|l| l.contains("packets transmitted")).ok_or_else(|| anyhow!("no summary line"))?;
    let mut nums = line.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
    let sent = nums.next().ok_or_else(|| anyhow!("no count sent"))?.parse()?;
    let received = nums.next().ok_or_else(|| anyhow!("no count received"))?.parse()?;
    let (mut rtt_min_ms, mut rtt_avg_ms) = (0.0, 0.0);
    if let Some(rtt) = text.lines().find_map(|l| l.strip_prefix("rtt min/avg/max/mdev = ")) {
        // "80.1/81.2/83.0/1.1 ms, pipe 2" when replies overlapped.
        let rtt = rtt.split(" ms").next().unwrap_or(rtt);
        let v: Vec<f64> = rtt.split('/').filter_map(|x| x.parse().ok()).collect();
        ensure!(v.len() == 4, "rtt line {rtt:?}");
        (rtt_min_ms, rtt_avg_ms) = (v[0], v[1]);
    }
    Ok(PingStats { sent, received, rtt_min_ms, rtt_avg_ms })
}

// ---------------------------------------------------------------------------------------------
// The WAN link: two TAPs and a timed queue per direction.

/// Frames a link carried, per direction.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkStats {
    /// Site → public: frames forwarded, dropped by the loss draw, dropped because the queue was full.
    pub up: DirStats,
    /// Public → site.
    pub down: DirStats,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct DirStats {
    pub frames: u64,
    pub lost: u64,
    pub overflow: u64,
}

#[derive(Default)]
struct DirCounters {
    frames: AtomicU64,
    lost: AtomicU64,
    overflow: AtomicU64,
}

impl DirCounters {
    fn get(&self) -> DirStats {
        DirStats {
            frames: self.frames.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            overflow: self.overflow.load(Ordering::Relaxed),
        }
    }
}

struct WanLink {
    /// Closing it (dropping) tells both threads to end: their poll sees the pipe hang up.
    stop: Option<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
    counters: [Arc<DirCounters>; 2],
}

impl WanLink {
    /// Starts the two directions between the router's TAP (`site`) and the public one.
    fn start(name: &str, site: OwnedFd, public: OwnedFd, link: Link) -> Result<WanLink> {
        let (stop_rx, stop_tx) = nix::unistd::pipe().context("a pipe to stop the link's threads")?;
        let (site, public, stop_rx) = (Arc::new(site), Arc::new(public), Arc::new(stop_rx));
        let counters = [Arc::new(DirCounters::default()), Arc::new(DirCounters::default())];
        let seed =
            name.bytes().fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let mut threads = Vec::new();
        for (dir, (from, to)) in [(site.clone(), public.clone()), (public, site)].into_iter().enumerate() {
            let (stop, counters) = (stop_rx.clone(), counters[dir].clone());
            let rng = Rng(seed ^ (dir as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("fedlab-{}", if dir == 0 { "up" } else { "down" }))
                    .spawn(move || pump(&from, &to, &stop, link, rng, &counters))
                    .context("a link thread")?,
            );
        }
        Ok(WanLink { stop: Some(stop_tx), threads, counters })
    }

    fn stats(&self) -> LinkStats {
        LinkStats { up: self.counters[0].get(), down: self.counters[1].get() }
    }
}

impl Drop for WanLink {
    fn drop(&mut self) {
        drop(self.stop.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// xorshift64*: the loss and jitter draws (seeded from the lab and site, so runs differ only by
/// timing).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One direction of a link: frames read from `from` leave by `to` at their departure time, in
/// order, until `stop` hangs up. A frame's departure is its arrival plus the delay ± jitter, and
/// never before the departure of the frame ahead of it.
fn pump(from: &OwnedFd, to: &OwnedFd, stop: &OwnedFd, link: Link, mut rng: Rng, counters: &DirCounters) {
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut queued_bytes = 0usize;
    let mut last_departure = Instant::now();
    let mut buf = vec![0u8; FRAME_BYTES_MAX];
    let delay = Duration::from_millis(link.delay_ms.into());
    let loss = link.loss_pct / 100.0;
    let mut from_file = File::from(from.try_clone().expect("dup of a TAP fd"));
    let mut to_file = File::from(to.try_clone().expect("dup of a TAP fd"));
    loop {
        let now = Instant::now();
        let timeout = queue.front().map(|(t, _)| TimeSpec::from_duration(t.saturating_duration_since(now)));
        let mut fds = [PollFd::new(from.as_fd(), PollFlags::POLLIN), PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
        match ppoll(&mut fds, timeout, None) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => panic!("the lab's link: poll: {e}"),
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        if fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN)) {
            // Everything the TAP holds now (non-blocking: it ends with EAGAIN).
            loop {
                let n = match from_file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // The TAP is gone (its namespace was deleted under us): nothing more comes.
                    Err(_) => return,
                };
                if loss > 0.0 && rng.unit() < loss {
                    counters.lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if queue.len() >= LINK_QUEUE_FRAMES_MAX || queued_bytes + n > LINK_QUEUE_BYTES_MAX {
                    counters.overflow.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // jitter_ms <= delay_ms (Link::check): never before it came.
                let after = if link.jitter_ms == 0 {
                    delay
                } else {
                    let jitter_ms = (rng.unit() * 2.0 - 1.0) * f64::from(link.jitter_ms);
                    Duration::from_secs_f64((f64::from(link.delay_ms) + jitter_ms).max(0.0) / 1000.0)
                };
                let departure = Instant::now() + after;
                last_departure = last_departure.max(departure);
                queue.push_back((last_departure, buf[..n].to_vec()));
                queued_bytes += n;
            }
        }
        let now = Instant::now();
        while queue.front().is_some_and(|(t, _)| *t <= now) {
            let (_, frame) = queue.pop_front().unwrap();
            queued_bytes -= frame.len();
            // A TAP write is the frame arriving on that interface; it does not block. An error
            // (the interface down for a moment) drops the frame, as a wire would.
            if to_file.write(&frame).is_ok() {
                counters.frames.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// `ifreq` as TUNSETIFF reads it: the name, then the flags (a `short`), padded to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    pad: [u8; 22],
}

/// A TAP device `name` in the calling thread's namespace, without packet info, non-blocking; it
/// exists as long as the descriptor is open.
fn open_tap(name: &str) -> Result<OwnedFd> {
    ensure!(name.len() < libc::IFNAMSIZ, "TAP name {name:?} is longer than {} bytes", libc::IFNAMSIZ - 1);
    let tun = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .context("/dev/net/tun")?;
    let mut req =
        IfReq { name: [0; libc::IFNAMSIZ], flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short, pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq` lays out (40 bytes,
    // name then flags) and which lives across the call; the fd is the open /dev/net/tun above.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        bail!("TUNSETIFF {name}: {}", std::io::Error::last_os_error());
    }
    Ok(OwnedFd::from(tun))
}

// ---------------------------------------------------------------------------------------------
// Tests of the lab itself.

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

    use super::*;

    fn site_link(delay_ms: u32) -> Link {
        Link { delay_ms, ..Link::CLEAN }
    }

    /// The smallest round trip of `rounds` UDP exchanges between `a` and `b`, sites behind
    /// endpoint-independent NATs, after a hole punch: each sends to the other's router at the
    /// port it bound, until both have heard the other.
    fn punched_udp_rtt_ms(a: &Host, a_site: &Site, b: &Host, b_site: &Site, rounds: u32) -> f64 {
        const PORT: u16 = 40_100;
        let sa = a.run(|| UdpSocket::bind((a.ip(), PORT))).unwrap();
        let sb = b.run(|| UdpSocket::bind((b.ip(), PORT))).unwrap();
        let (to_b, to_a) = (SocketAddr::from((b_site.wan_ip(), PORT)), SocketAddr::from((a_site.wan_ip(), PORT)));
        for s in [&sa, &sb] {
            s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        }
        let mut buf = [0u8; 64];
        let start = Instant::now();
        let (mut a_heard, mut b_heard) = (false, false);
        while !(a_heard && b_heard) {
            assert!(start.elapsed() < Duration::from_secs(10), "no UDP hole between {} and {} in 10 s", a.name, b.name);
            sa.send_to(b"punch", to_b).unwrap();
            sb.send_to(b"punch", to_a).unwrap();
            b_heard |= sb.recv_from(&mut buf).is_ok();
            a_heard |= sa.recv_from(&mut buf).is_ok();
        }
        // Drain the punches still in flight, then time exchanges answered by `b`.
        std::thread::sleep(Duration::from_millis(500));
        for s in [&sa, &sb] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            while s.recv_from(&mut buf).is_ok() {}
        }
        sb.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        sa.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut buf = [0u8; 64];
                for _ in 0..rounds {
                    let Ok((n, from)) = sb.recv_from(&mut buf) else { return };
                    sb.send_to(&buf[..n], from).unwrap();
                }
            });
            let mut best = f64::MAX;
            for i in 0..rounds {
                let sent = Instant::now();
                sa.send_to(&i.to_be_bytes(), to_b).unwrap();
                let (n, _) = sa.recv_from(&mut buf).expect("an echo through the punched hole");
                assert_eq!(&buf[..n], &i.to_be_bytes(), "echoes come back in order");
                best = best.min(sent.elapsed().as_secs_f64() * 1000.0);
            }
            best
        })
    }

    #[test]
    fn the_round_trip_between_sites_is_at_least_twice_their_delays() {
        let Some(fed) = fed_or_skip("the lab's delay test") else { return };
        let a = fed.site("a", Nat::Eim, site_link(20)).unwrap();
        let b = fed.site("b", Nat::Eim, Link { delay_ms: 30, jitter_ms: 5, ..Link::CLEAN }).unwrap();
        let (ha, hb) = (a.host("ha").unwrap(), b.host("hb").unwrap());
        let relay = fed.public_host("relay").unwrap();

        let to_public = fed.ping(&ha, &relay, 10, 100).unwrap();
        eprintln!("site a (20 ms) -> public: {to_public:?}");
        assert_eq!(to_public.received, 10, "no loss configured: {to_public:?}");
        assert!(to_public.rtt_min_ms >= 40.0, "a round trip over a 20 ms link takes >= 40 ms: {to_public:?}");
        let b_public = fed.ping(&hb, &relay, 10, 100).unwrap();
        eprintln!("site b (30 ± 5 ms) -> public: {b_public:?}");
        assert!(b_public.rtt_min_ms >= 50.0, "30 ± 5 ms each way is >= 50 ms a round trip: {b_public:?}");

        let rtt = punched_udp_rtt_ms(&ha, &a, &hb, &b, 10);
        eprintln!("site a <-> site b through their NATs: {rtt:.1} ms (configured one way: 20 + 30 ± 5 ms)");
        assert!(rtt >= 2.0 * (20.0 + 25.0), "a <-> b crosses both links twice: {rtt} ms");

        // A host of the same site is one bridge away: no delay.
        let ha2 = a.host("ha2").unwrap();
        let lan = fed.ping(&ha, &ha2, 3, 100).unwrap();
        assert!(lan.received == 3 && lan.rtt_avg_ms < 20.0, "the LAN is not behind the WAN link: {lan:?}");
    }

    #[test]
    fn a_lossy_link_drops_about_its_share_of_frames_each_way() {
        let Some(fed) = fed_or_skip("the lab's loss test") else { return };
        let site = fed.site("lossy", Nat::Eim, Link { loss_pct: 10.0, ..Link::CLEAN }).unwrap();
        let h = site.host("h").unwrap();
        let p = fed.public_host("p").unwrap();
        // 400 pings: each crosses the link twice, so 1 - 0.9^2 = 19 % are lost (sd 2 %).
        let stats = fed.ping(&h, &p, 400, 5).unwrap();
        let lost_pct = 100.0 * f64::from(stats.sent - stats.received) / f64::from(stats.sent);
        let link = fed.link_stats(&site);
        eprintln!("10 % per direction: ping lost {lost_pct:.1} % of {}; link {link:?}", stats.sent);
        assert!((10.0..=28.0).contains(&lost_pct), "expected 19 % ± 4 sd of round trips lost, saw {lost_pct:.1} %");
        let LinkStats { up, down } = link;
        for (dir, d) in [("up", up), ("down", down)] {
            let pct = 100.0 * d.lost as f64 / (d.lost + d.frames) as f64;
            assert!((4.0..=17.0).contains(&pct), "{dir}: {pct:.1} % of frames lost, expected 10 %: {d:?}");
            assert_eq!(d.overflow, 0, "{dir}: the queue never filled: {d:?}");
        }
    }

    #[test]
    fn a_link_keeps_frames_in_order_under_jitter_and_no_faster_than_its_rate() {
        let Some(fed) = fed_or_skip("the lab's link test") else { return };
        // Jitter as large as the delay: without the in-order rule, datagrams 1 ms apart would
        // overtake each other most of the time.
        let site =
            fed.site("jittery", Nat::Eim, Link { delay_ms: 20, jitter_ms: 20, loss_pct: 0.0, rate_mbit: 20 }).unwrap();
        let h = site.host("h").unwrap();
        let p = fed.public_host("p").unwrap();
        let rx = p.run(|| UdpSocket::bind((p.ip(), 7100))).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let tx = h.run(|| UdpSocket::bind((h.ip(), 0))).unwrap();
        // One datagram through first, so every hop knows the next one's MAC: while a neighbour
        // is being resolved Linux queues the datagrams for it and, once it answers, flushes the
        // queue while a datagram sent meanwhile on the other CPU goes straight out ahead of it
        // (datagram 47 arrived between 9 and 10 once), which is the kernel's order, not the link's.
        let mut buf = [0u8; 4];
        tx.send_to(&u32::MAX.to_be_bytes(), rx.local_addr().unwrap()).unwrap();
        assert_eq!(rx.recv_from(&mut buf).map(|(n, _)| (n, buf)).unwrap(), (4, u32::MAX.to_be_bytes()));
        for i in 0u32..200 {
            tx.send_to(&i.to_be_bytes(), rx.local_addr().unwrap()).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut got = Vec::new();
        while let Ok((4, _)) = rx.recv_from(&mut buf) {
            got.push(u32::from_be_bytes(buf));
        }
        assert_eq!(got, (0..200).collect::<Vec<_>>(), "every datagram, in the order sent");

        // 5 MB through 20 Mbit/s takes at least 2 s, however fast the lab.
        const BYTES: usize = 5_000_000;
        let listener = p.run(|| TcpListener::bind((p.ip(), 7101))).unwrap();
        let to = listener.local_addr().unwrap();
        let (took, received) = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let (mut conn, _) = listener.accept().unwrap();
                let mut sink = Vec::new();
                conn.read_to_end(&mut sink).unwrap();
                sink.len()
            });
            let mut conn = h.run(|| TcpStream::connect(to)).unwrap();
            let start = Instant::now();
            conn.write_all(&vec![7u8; BYTES]).unwrap();
            drop(conn);
            let received = reader.join().unwrap();
            (start.elapsed(), received)
        });
        assert_eq!(received, BYTES);
        let mbit = BYTES as f64 * 8.0 / took.as_secs_f64() / 1e6;
        eprintln!("{BYTES} bytes through a 20 Mbit/s link in {took:?}: {mbit:.1} Mbit/s");
        assert!(mbit <= 20.0 * 1.05, "the link's rate holds: {mbit:.1} Mbit/s through 20 Mbit/s");
    }

    #[test]
    fn eim_keeps_a_lan_port_for_every_destination_and_symmetric_does_not() {
        let Some(fed) = fed_or_skip("the lab's NAT test") else { return };
        let eim = fed.site("eim", Nat::Eim, Link::CLEAN).unwrap();
        let sym = fed.site("sym", Nat::Symmetric, Link::CLEAN).unwrap();
        let echo = [fed.public_host("echo1").unwrap(), fed.public_host("echo2").unwrap()];
        // Four destinations: two hosts, two ports each; what each sees of the sender is the NAT's
        // mapping for that destination.
        let servers: Vec<UdpSocket> = echo
            .iter()
            .flat_map(|h| [7001u16, 7002].map(|port| h.run(|| UdpSocket::bind((h.ip(), port))).unwrap()))
            .collect();
        for s in &servers {
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        }
        const LAN_PORT: u16 = 40_200;
        let seen_from = |site: &Site| -> Vec<SocketAddr> {
            let host = site.host(&format!("{}-h", site.name)).unwrap();
            let client = host.run(|| UdpSocket::bind((host.ip(), LAN_PORT))).unwrap();
            servers
                .iter()
                .map(|s| {
                    client.send_to(b"who am i", s.local_addr().unwrap()).unwrap();
                    let mut buf = [0u8; 16];
                    s.recv_from(&mut buf).expect("the datagram through the NAT").1
                })
                .collect()
        };
        let from_eim = seen_from(&eim);
        assert!(
            from_eim.iter().all(|a| *a == SocketAddr::from((eim.wan_ip(), LAN_PORT))),
            "an endpoint-independent NAT shows {}:{LAN_PORT} to every destination: {from_eim:?}",
            eim.wan_ip()
        );
        let from_sym = seen_from(&sym);
        assert!(from_sym.iter().all(|a| a.ip() == std::net::IpAddr::V4(sym.wan_ip())), "{from_sym:?}");
        let ports: BTreeSet<u16> = from_sym.iter().map(SocketAddr::port).collect();
        // Random ports: two of the four may meet by chance (1 in ~28,000), three cannot.
        assert!(ports.len() >= 3, "a symmetric NAT maps each destination to its own port: {from_sym:?}");
    }

    #[test]
    fn a_router_drops_an_unsolicited_syn_without_a_reset() {
        let Some(fed) = fed_or_skip("the lab's NAT test") else { return };
        let site = fed.site("home", Nat::Eim, Link::CLEAN).unwrap();
        let inside = site.host("inside").unwrap();
        let outside = fed.public_host("outside").unwrap();
        // The path works outward: a LAN host reaches a public listener through the NAT.
        let listener = outside.run(|| TcpListener::bind((outside.ip(), 8080))).unwrap();
        let out = inside
            .run(|| TcpStream::connect_timeout(&SocketAddr::from((outside.ip(), 8080)), Duration::from_secs(5)))
            .expect("a LAN host connects out");
        let (_, seen) = listener.accept().unwrap();
        assert_eq!(seen.ip(), std::net::IpAddr::V4(site.wan_ip()), "masqueraded as the router");
        drop(out);
        // Inward, the router neither forwards nor answers a SYN: no RST ("refused"), a timeout.
        for port in [22u16, seen.port()] {
            let err = outside
                .run(|| TcpStream::connect_timeout(&SocketAddr::from((site.wan_ip(), port)), Duration::from_secs(2)))
                .expect_err("a SYN to the router's WAN connects nowhere");
            assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "port {port}: dropped, not refused: {err}");
        }
        // A closed port of a public host is refused: the RST above would have come back.
        let err = inside
            .run(|| TcpStream::connect_timeout(&SocketAddr::from((outside.ip(), 8081)), Duration::from_secs(2)))
            .expect_err("nothing listens on 8081");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    }

    #[test]
    fn a_cut_site_hears_nothing_until_healed() {
        let Some(fed) = fed_or_skip("the lab's cut test") else { return };
        let site = fed.site("island", Nat::Eim, Link::CLEAN).unwrap();
        let (h, h2) = (site.host("h").unwrap(), site.host("h2").unwrap());
        let p = fed.public_host("p").unwrap();
        assert_eq!(fed.ping(&h, &p, 3, 50).unwrap().received, 3);
        fed.cut(&site).unwrap();
        assert_eq!(fed.ping(&h, &p, 3, 50).unwrap().received, 0, "cut off");
        assert_eq!(fed.ping(&h, &h2, 3, 50).unwrap().received, 3, "the LAN still works");
        fed.heal(&site).unwrap();
        assert_eq!(fed.ping(&h, &p, 3, 50).unwrap().received, 3, "healed");
    }

    #[test]
    fn bad_lab_input_is_an_error_naming_the_fix() {
        let Some(fed) = fed_or_skip("the lab's input checks") else { return };
        let e = fed.site("x", Nat::Eim, Link { delay_ms: 5, jitter_ms: 10, loss_pct: 120.0, rate_mbit: 0 });
        let e = format!("{:#}", e.err().unwrap());
        assert!(e.contains("jitter_ms 10 exceeds delay_ms 5") && e.contains("loss_pct 120"), "{e}");
        fed.public_host("dup").unwrap();
        let e = format!("{:#}", fed.public_host("dup").err().unwrap());
        assert!(e.contains("\"dup\" is taken"), "{e}");
        let e = format!("{:#}", fed.public_host("Bad_Name").err().unwrap());
        assert!(e.contains("lowercase letters"), "{e}");
    }

    /// TCP throughput from `from` to `to` by iperf3 (`seconds` long; `reverse`: `to` sends), in Mbit/s.
    fn iperf3_mbit(fed: &Fed, from: &Host, to: &Host, seconds: u32, reverse: bool) -> f64 {
        let _server = fed
            .spawn(to.command("iperf3").args(["-s", "-1", "-B", &to.ip().to_string()]).stdout(Stdio::null()))
            .unwrap();
        let start = Instant::now();
        loop {
            let mut cmd = from.command("iperf3");
            cmd.args(["-c", &to.ip().to_string(), "-t", &seconds.to_string(), "-J"]);
            if reverse {
                cmd.arg("-R");
            }
            let out = cmd.stdin(Stdio::null()).output().expect("iperf3 (scripts/setup.sh installs it)");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
                return bps / 1e6;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "iperf3 {} -> {}: {}", from.name, to.name, v["error"]);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// bench/netlab.sh: what the lab itself does, for docs/BENCHMARKS.md.
    #[test]
    #[ignore = "benchmark: bench/netlab.sh"]
    fn bench_netlab_figures() {
        let Some(fed) = fed_or_skip("the lab benchmark") else { return };
        let wan =
            fed.site("wan", Nat::Eim, Link { delay_ms: 50, jitter_ms: 0, loss_pct: 0.0, rate_mbit: 100 }).unwrap();
        let lossy = fed.site("lossy", Nat::Eim, Link { loss_pct: 1.0, ..Link::CLEAN }).unwrap();
        let clean = fed.site("clean", Nat::Eim, Link::CLEAN).unwrap();
        let (hw, hl, hc) = (wan.host("hw").unwrap(), lossy.host("hl").unwrap(), clean.host("hc").unwrap());
        let p = fed.public_host("p").unwrap();
        let hp2 = fed.public_host("p2").unwrap();

        let rtt = fed.ping(&hw, &p, 20, 100).unwrap();
        let clean_rtt = fed.ping(&hc, &p, 20, 100).unwrap();
        let lan = fed.ping(&p, &hp2, 20, 100).unwrap();
        let loss = fed.ping(&hl, &p, 2000, 2).unwrap();
        let loss_pct = 100.0 * f64::from(loss.sent - loss.received) / f64::from(loss.sent);
        let ls = fed.link_stats(&lossy);
        let frame_loss = |d: DirStats| 100.0 * d.lost as f64 / (d.lost + d.frames) as f64;
        let up = iperf3_mbit(&fed, &hw, &p, 10, false);
        let down = iperf3_mbit(&fed, &hw, &p, 10, true);
        let clean_up = iperf3_mbit(&fed, &hc, &p, 5, false);
        let bridge = iperf3_mbit(&fed, &hp2, &p, 5, false);
        // A lab the size of the 32-node tests: three sites, 40 hosts in all.
        let built = Instant::now();
        let big = Fed::new().unwrap();
        let sites: Vec<Site> = (0..3).map(|i| big.site(&format!("s{i}"), Nat::Eim, Link::CLEAN).unwrap()).collect();
        for i in 0..40 {
            sites[i % 3].host(&format!("h{i}")).unwrap();
        }
        let built = built.elapsed();
        let removed = Instant::now();
        drop(big);
        let removed = removed.elapsed();
        println!("netlab figures");
        println!(
            "a lab of 3 sites and 40 hosts: built in {:.2} s, removed in {:.2} s",
            built.as_secs_f64(),
            removed.as_secs_f64()
        );
        println!(
            "round trip, site -> public over 50 ms one way (100 ms configured): min {:.1} ms, mean {:.1} ms (20 pings)",
            rtt.rtt_min_ms, rtt.rtt_avg_ms
        );
        println!(
            "round trip, site -> public over a clean link (the userspace link's own cost): min {:.2} ms, mean {:.2} ms",
            clean_rtt.rtt_min_ms, clean_rtt.rtt_avg_ms
        );
        println!("round trip, public host -> public host (one bridge, no link): mean {:.3} ms", lan.rtt_avg_ms);
        println!(
            "loss, 1 % each way (1.99 % a round trip expected): {loss_pct:.2} % of {} pings; frames dropped up {:.2} %, down {:.2} %",
            loss.sent,
            frame_loss(ls.up),
            frame_loss(ls.down)
        );
        println!(
            "TCP (iperf3, 10 s) over 100 Mbit/s and 50 ms one way: site -> public {up:.1} Mbit/s, public -> site {down:.1} Mbit/s"
        );
        println!(
            "TCP (iperf3, 5 s) over a clean link (the lab's ceiling): {clean_up:.0} Mbit/s; bridge only: {bridge:.0} Mbit/s"
        );
    }

    #[test]
    fn a_new_lab_removes_the_labs_of_dead_test_processes_and_what_runs_in_them() {
        let Some(probe) = fed_or_skip("the lab's orphan test") else { return };
        drop(probe);
        // A pid that was and is no more: the test process a timeout killed.
        let mut gone = Command::new("true").spawn().unwrap();
        let dead = gone.id();
        gone.wait().unwrap();
        let orphan = format!("{NETNS_PREFIX}{dead}-0-relay");
        run(Command::new("ip").args(["netns", "add", &orphan])).unwrap();
        let mut inside = Command::new("ip").args(["netns", "exec", &orphan, "sleep", "600"]).spawn().unwrap();
        let start = Instant::now();
        // `ip netns exec` has entered the namespace once its child's ns differs from ours.
        while std::fs::read_link(format!("/proc/{}/ns/net", inside.id())).ok()
            == std::fs::read_link("/proc/self/ns/net").ok()
        {
            assert!(start.elapsed() < Duration::from_secs(5), "sleep entered {orphan}");
            std::thread::sleep(Duration::from_millis(10));
        }
        let fed = Fed::new().unwrap();
        assert!(!Path::new("/run/netns").join(&orphan).exists(), "{orphan} was removed by a new lab");
        let status = inside.try_wait().unwrap();
        assert!(status.is_some(), "the process left in {orphan} was killed");
        drop(fed);
    }

    #[test]
    fn a_lab_is_gone_with_every_process_in_it_when_its_test_panics() {
        let Some(probe) = fed_or_skip("the lab's cleanup test") else { return };
        drop(probe);
        let (id, held_pid, mut raw) = std::thread::spawn(|| {
            let fed = Fed::new().unwrap();
            let site = fed.site("s", Nat::Symmetric, Link { delay_ms: 5, rate_mbit: 10, ..Link::CLEAN }).unwrap();
            let h = site.host("h").unwrap();
            let held = fed.spawn(h.command("sleep").arg("600")).unwrap();
            // A process the lab does not hold: killed all the same, for being in its namespaces.
            let raw = h.command("sleep").arg("600").spawn().unwrap();
            let id = fed.id().to_string();
            let held_pid = held.id();
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                let (_fed, _held) = (fed, held);
                panic!("a test that fails");
            }));
            assert!(caught.is_err());
            (id, held_pid, raw)
        })
        .join()
        .unwrap();
        let left: Vec<String> = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("{id}-")))
            .collect();
        assert!(left.is_empty(), "namespaces outlived their lab: {left:?}");
        assert!(!Path::new(&format!("/proc/{held_pid}")).exists(), "a held process ({held_pid}) outlived its lab");
        let status = raw.try_wait().unwrap();
        assert!(status.is_some(), "a process the lab did not hold ({}) outlived it", raw.id());
    }
}
