//! The status page for the person in the room: what the live node is, whom it reaches, what it
//! does, and what is wrong, readable at a glance on an 80x25 console. [`render`] is pure; the
//! supervisor draws its text on tty1 every 2 s and writes it to the serial console, framed by
//! [`SERIAL_FRAME`] lines, when something other than the live figures changed.

use std::fmt::Write;

/// The line before and after each block on the serial console (tests look for it).
pub const SERIAL_FRAME: &str = "== shoal ==";
/// Width of the console, in characters; every line is cut to one less (no wrap at the edge).
pub const COLUMNS: usize = 80;
/// Characters a row's value has: the width less the margin, the name column and the last column.
const VALUE_COLUMNS: usize = COLUMNS - 12;
/// Rows a problem or the last error may take: the fix is at the end of the line.
const WRAPPED_LINES_MAX: usize = 3;
/// Interfaces listed, one per row, before "+N more interfaces".
const INTERFACES_SHOWN_MAX: usize = 3;

/// How jobs' microVMs run here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
    /// `backend = "namespace"`: no VMs.
    Namespace,
}

/// Where the store is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreAt {
    /// Not mounted yet.
    Nowhere,
    Disk {
        device: String,
    },
    Ram {
        cap_bytes: u64,
    },
}

/// Where the running configuration came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// Not read yet, or unreadable.
    None,
    Partition {
        device: String,
    },
    Cidata {
        device: String,
    },
    Metadata,
    /// Only `shoal.*=` words of the kernel command line (netboot).
    CommandLine,
}

/// The node process as the supervisor sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Not started: waiting for a usable configuration or a network address.
    Waiting,
    Starting,
    Running,
    /// It exited; started again in `in_s` seconds.
    Restarting {
        exit: String,
        in_s: u64,
    },
}

/// Everything the page shows. `None`s and empties read as "not known yet".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub version: String,
    pub hostname: String,
    pub node_state: NodeState,
    /// The node's id (hex), from its API.
    pub node_id: Option<String>,
    /// Names (hostnames) of the other live peers.
    pub peers: Vec<String>,
    /// The `join` addresses configured; 0 = mDNS.
    pub join_count: usize,
    pub jobs_running: Option<usize>,
    /// Done jobs of the DAGs the mesh knows.
    pub jobs_done: Option<usize>,
    /// Each interface with its addresses, loopback left out.
    pub addresses: Vec<(String, Vec<String>)>,
    pub mem_available_bytes: u64,
    pub mem_total_bytes: u64,
    /// Resident memory of shoal itself: this supervisor and its node.
    pub shoal_rss_bytes: u64,
    pub store: StoreAt,
    pub store_used_bytes: u64,
    pub store_size_bytes: u64,
    pub accel: Accel,
    pub config: ConfigSource,
    /// `shoal.*=` words of the kernel command line applied over it.
    pub config_overrides: usize,
    /// `clock: ...` text, None until the clock was set or given up on.
    pub clock: Option<String>,
    /// What stops the node from working, with the fix: bad configuration, no network.
    pub problem: Option<String>,
    /// The node's last ERROR or WARN line.
    pub last_error: Option<String>,
}

/// The page: at most 25 lines of at most [`COLUMNS`] - 1 characters.
pub fn render(s: &Status) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut row = |name: &str, value: String| lines.push(format!(" {name:<9} {value}"));
    let state = match &s.node_state {
        NodeState::Waiting => "waiting".to_string(),
        NodeState::Starting => "starting".to_string(),
        NodeState::Running => "running".to_string(),
        NodeState::Restarting { exit, in_s } => format!("stopped ({exit}); starting again in {in_s} s"),
    };
    let id = s.node_id.as_deref().map(|id| id.chars().take(16).collect::<String>());
    row("node", format!("{} ({state})", id.as_deref().unwrap_or("-")));
    let mesh = match (s.peers.len(), s.join_count) {
        (0, _) if s.node_state == NodeState::Waiting => "- (no node yet)".to_string(),
        (0, 0) => "no peer yet; looking on this network by mDNS (no join address set)".to_string(),
        (0, n) => format!("no peer yet; joining through {n} address{}", if n == 1 { "" } else { "es" }),
        (n, _) => {
            let how = if s.join_count == 0 { " (mDNS)" } else { "" };
            let head = format!("{n} peer{}{how}: ", if n == 1 { "" } else { "s" });
            format!("{head}{}", fit_names(&s.peers, VALUE_COLUMNS - head.chars().count()))
        }
    };
    row("mesh", mesh);
    let count = |n: Option<usize>| n.map_or("-".to_string(), |n| n.to_string());
    row("jobs", format!("{} running here, {} done in the mesh", count(s.jobs_running), count(s.jobs_done)));
    if s.addresses.is_empty() {
        row("network", "no network: no address yet; check the cable (DHCP on each port)".into());
    }
    for (i, (iface, addrs)) in s.addresses.iter().take(INTERFACES_SHOWN_MAX).enumerate() {
        let more = if i + 1 == INTERFACES_SHOWN_MAX && s.addresses.len() > INTERFACES_SHOWN_MAX {
            format!(" (+{} more interfaces)", s.addresses.len() - INTERFACES_SHOWN_MAX)
        } else {
            String::new()
        };
        row(if i == 0 { "network" } else { "" }, format!("{iface} {}{more}", addrs.join(" ")));
    }
    // In MiB: on a 2 GiB PC the 100 MiB steps of "1.7 GiB" hide what the node itself uses.
    row(
        "memory",
        format!(
            "{} MiB free of {} MiB ({} MiB in use, shoal {} MiB)",
            s.mem_available_bytes >> 20,
            s.mem_total_bytes >> 20,
            s.mem_total_bytes.saturating_sub(s.mem_available_bytes) >> 20,
            s.shoal_rss_bytes >> 20
        ),
    );
    let usage = || match s.store_used_bytes.saturating_mul(100).checked_div(s.store_size_bytes) {
        None => String::new(),
        Some(pct) => format!(", {} of {} used ({pct}%)", gib(s.store_used_bytes), gib(s.store_size_bytes)),
    };
    row(
        "store",
        match &s.store {
            StoreAt::Nowhere => "not mounted yet".to_string(),
            StoreAt::Disk { device } => format!("disk {device}{}", usage()),
            StoreAt::Ram { .. } if s.store_size_bytes > 0 => format!("RAM{}; lost at power-off", usage()),
            StoreAt::Ram { cap_bytes } => format!("RAM, at most {}; lost at power-off", gib(*cap_bytes)),
        },
    );
    row(
        "VM jobs",
        match s.accel {
            Accel::Kvm => "KVM (hardware virtualization)".into(),
            Accel::Tcg => "TCG (no VT-x/AMD-V here: VMs run emulated, slower)".into(),
            Accel::Namespace => "none: jobs run in namespaces (backend = \"namespace\")".into(),
        },
    );
    row(
        "config",
        match &s.config {
            ConfigSource::None => "-".to_string(),
            ConfigSource::Partition { device } => format!("shoal.toml on the SHOAL partition ({device})"),
            ConfigSource::Cidata { device } => format!("cloud-init user-data on cidata ({device})"),
            ConfigSource::Metadata => "cloud metadata user-data (169.254.169.254)".to_string(),
            ConfigSource::CommandLine => "the kernel command line only".to_string(),
        } + &match (s.config_overrides, &s.config) {
            (0, _) | (_, ConfigSource::CommandLine) => String::new(),
            (n, _) => format!(" + {n} shoal.* boot option{}", if n == 1 { "" } else { "s" }),
        },
    );
    row("clock", s.clock.clone().unwrap_or_else(|| "not set yet".into()));
    for (name, text) in [("problem", &s.problem), ("last err", &s.last_error)] {
        let text = text.as_deref().unwrap_or("none");
        for (i, line) in wrap(text, VALUE_COLUMNS, WRAPPED_LINES_MAX).into_iter().enumerate() {
            row(if i == 0 { name } else { "" }, line);
        }
    }
    let title = format!(" shoal {} - mesh node {}", s.version, s.hostname);
    let mut out = String::new();
    for line in std::iter::once(title).chain(std::iter::once(String::new())).chain(lines).take(25) {
        out.extend(line.chars().take(COLUMNS - 1));
        out.push('\n');
    }
    out
}

/// The page without its live figures (free memory, store use): the serial console gets a block
/// only when this changes, so its log is a record of events rather than a clock.
pub fn render_stable(s: &Status) -> String {
    render(&Status { mem_available_bytes: 0, shoal_rss_bytes: 0, store_used_bytes: 0, ..s.clone() })
}

/// A serial console block: the page framed by [`SERIAL_FRAME`] lines.
pub fn serial_block(page: &str) -> String {
    format!("{SERIAL_FRAME}\n{page}{SERIAL_FRAME}\n")
}

/// What tty1 gets: home, clear, the page.
pub fn tty_frame(page: &str) -> String {
    format!("\x1b[H\x1b[2J{page}")
}

/// `text` in lines of at most `width` characters, broken at spaces (a longer word is cut), at
/// most `lines_max` of them.
fn wrap(text: &str, width: usize, lines_max: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let word: String = word.chars().take(width).collect();
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    lines.push(line);
    lines.truncate(lines_max);
    lines
}

/// As many `names` as fit in `width` characters, then "+N more" for the rest.
fn fit_names(names: &[String], width: usize) -> String {
    let mut out = String::new();
    for (i, name) in names.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let rest = names.len() - i - 1;
        let tail = if rest == 0 { 0 } else { format!(" +{rest} more").len() };
        if out.chars().count() + sep.len() + name.chars().count() + tail > width {
            let _ = write!(out, "{}+{} more", if i == 0 { "" } else { " " }, names.len() - i);
            return out;
        }
        out.push_str(sep);
        out.push_str(name);
    }
    out
}

/// Bytes as GiB with one decimal, or MiB under 1 GiB.
fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        Status {
            version: "0.1.0".into(),
            hostname: "shoal-5e3a".into(),
            node_state: NodeState::Running,
            node_id: Some("5e3a9c0d11223344556677889900aabbccddeeff".into()),
            peers: vec!["lab-01".into(), "lab-02".into()],
            join_count: 1,
            jobs_running: Some(1),
            jobs_done: Some(17),
            addresses: vec![("eth0".into(), vec!["192.168.1.23/24".into(), "fe80::1/64".into()])],
            mem_available_bytes: 1536 << 20,
            mem_total_bytes: 2 << 30,
            shoal_rss_bytes: 70 << 20,
            store: StoreAt::Ram { cap_bytes: 800 << 20 },
            store_used_bytes: 12 << 20,
            store_size_bytes: 800 << 20,
            accel: Accel::Tcg,
            config: ConfigSource::Partition { device: "sdb3".into() },
            config_overrides: 0,
            clock: Some("set from pool.ntp.org".into()),
            problem: None,
            last_error: None,
        }
    }

    #[test]
    fn the_page_reads_at_a_glance() {
        let page = render(&status());
        assert_eq!(
            page,
            " shoal 0.1.0 - mesh node shoal-5e3a

 node      5e3a9c0d11223344 (running)
 mesh      2 peers: lab-01, lab-02
 jobs      1 running here, 17 done in the mesh
 network   eth0 192.168.1.23/24 fe80::1/64
 memory    1536 MiB free of 2048 MiB (512 MiB in use, shoal 70 MiB)
 store     RAM, 12 MiB of 800 MiB used (1%); lost at power-off
 VM jobs   TCG (no VT-x/AMD-V here: VMs run emulated, slower)
 config    shoal.toml on the SHOAL partition (sdb3)
 clock     set from pool.ntp.org
 problem   none
 last err  none
"
        );
    }

    #[test]
    fn it_fits_80x25_whatever_it_is_given() {
        let mut s = status();
        s.peers = (0..50).map(|i| format!("a-very-long-host-name-{i}")).collect();
        s.addresses = (0..40).map(|i| (format!("eth{i}"), vec!["10.0.0.1/8".into()])).collect();
        s.last_error = Some("x".repeat(500));
        let page = render(&s);
        assert!(page.lines().count() <= 25);
        assert!(page.lines().all(|l| l.chars().count() < COLUMNS), "{page}");
        assert!(page.contains("50 peers: a-very-long-host-name-0, a-very-long-host-name-1 +48 more\n"), "{page}");
        assert!(page.contains("eth2 10.0.0.1/8 (+37 more interfaces)\n"), "{page}");
        assert!(page.contains(" last err  xxx"), "{page}");
    }

    #[test]
    fn no_peer_says_how_it_looks_for_them() {
        let mut s = status();
        s.peers.clear();
        s.join_count = 0;
        assert!(render(&s).contains(" mesh      no peer yet; looking on this network by mDNS (no join address set)\n"));
        s.join_count = 2;
        assert!(render(&s).contains(" mesh      no peer yet; joining through 2 addresses\n"));
        s.addresses.clear();
        s.problem = Some("shoal.toml:3:12: the mesh key is 3 characters, not 64; ...".into());
        let page = render(&s);
        assert!(
            page.contains(" network   no network: no address yet; check the cable (DHCP on each port)\n"),
            "{page}"
        );
        assert!(page.contains(" problem   shoal.toml:3:12: the mesh key is 3 characters"), "{page}");
        // A long problem wraps, so that its fix at the end is seen.
        s.problem = Some(format!("shoal.toml:1:12: {}", "word ".repeat(40)));
        let page = render(&s);
        let rows: Vec<&str> = page.lines().skip_while(|l| !l.starts_with(" problem")).take(4).collect();
        assert!(rows[1].starts_with("           word word") && rows[2].starts_with("           word"), "{page}");
        assert!(rows[3].starts_with(" last err"), "three rows at most: {page}");
    }

    #[test]
    fn the_serial_console_gets_a_block_only_when_more_than_figures_change() {
        let a = status();
        let mut b = a.clone();
        b.mem_available_bytes -= 1 << 20;
        b.store_used_bytes += 1 << 20;
        assert_ne!(render(&a), render(&b));
        assert_eq!(render_stable(&a), render_stable(&b));
        b.last_error = Some("refused peer 12D3Koo...: protocol 3, this node speaks 4".into());
        assert_ne!(render_stable(&a), render_stable(&b));
        let block = serial_block(&render(&a));
        assert!(block.starts_with("== shoal ==\n shoal 0.1.0") && block.ends_with("none\n== shoal ==\n"), "{block}");
    }
}
