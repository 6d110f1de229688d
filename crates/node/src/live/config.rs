//! `shoal.toml`, the live system's configuration: the default text (every line commented, for a
//! person editing it on any computer), its parse (`shoal.toml:LINE:COL: what; the fix`), and the
//! overrides from the kernel command line (`shoal.KEY=VALUE`).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

/// The `shoal.toml` the image ships on its `SHOAL` partition (`shoal live default-config` prints
/// it). Every key is here with its default, so the file is also the reference.
pub const DEFAULT_CONFIG: &str = r#"# shoal.toml: this computer's settings as a node of a shoal mesh.
# Edit it on any computer (Windows, macOS, Linux): it is on the small "SHOAL" drive of the stick.
# Lines starting with # are comments. Text values go in "double quotes".

# The mesh key: the 64 hex digits every node of your mesh shares (`shoal mesh init` makes one;
# its last line is the key). Without the right key this node cannot talk to the others.
mesh_key = ""
# Or instead: the name of a file on this drive holding the key (as `shoal mesh init` wrote it).
# mesh_key_file = "mesh.key"

# Nodes to join, as multiaddrs, e.g. ["/ip4/192.168.1.10/tcp/7171/p2p/12D3Koo..."].
# Empty: find the other nodes on this local network by mDNS (the screen says so).
join = []

# Labels jobs can ask for (a DAG's `requires.labels`), e.g. { room = "b12", owner = "lab" }.
labels = {}

# Cores to offer to the mesh: 0 = all of this computer's.
cores = 0
# Memory to offer to the mesh: "all", or an amount such as "2GiB".
memory = "all"

# Where jobs run: "microvm" (each job in its own small virtual machine, also a job that asks for
# namespaces; the default) or "namespace" (Linux namespaces: faster, but jobs share this
# computer's kernel; jobs that require a virtual machine still get one).
backend = "microvm"

# Where the node keeps its files: "disk" = on a drive partition labelled SHOAL-STORE when this
# computer has one (make it with `shoal live prepare-disk DEVICE`), else in RAM; "ram" = in RAM.
store = "disk"
# Largest size of the store when it is in RAM: an amount ("1GiB") or a share of RAM ("40%").
ram_store_max = "40%"

# Time servers asked at boot (SNTP). If none answers, the node takes the mesh's time.
ntp = ["pool.ntp.org", "time.cloudflare.com", "time.google.com"]

# The TCP port other nodes reach this one's mesh connection on.
listen_port = 7171
# The UDP port other nodes fetch files (blobs) from this one on.
blobs_port = 7172

# Virtual machines kept booted ahead of jobs, per kind of job: each holds its memory.
# Leave it out for the default: 0 on a computer with less than 4 GiB of RAM, 1 otherwise.
# warm_vms = 0

# Wi-Fi (NOT TESTED: the image is tested on wired networks only; needs wpa_supplicant in it).
# [wifi]
# ssid = "network name"
# psk = "password"
"#;

/// What the kernel command line's overrides start with: `shoal.join=...`.
pub const CMDLINE_PREFIX: &str = "shoal.";

/// The keys of `shoal.toml`, for errors that name the nearest one.
const KEYS: &[&str] = &[
    "mesh_key",
    "mesh_key_file",
    "join",
    "labels",
    "cores",
    "memory",
    "backend",
    "store",
    "ram_store_max",
    "ntp",
    "listen_port",
    "blobs_port",
    "warm_vms",
    "wifi",
];

/// Where jobs run (`backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Microvm,
    Namespace,
}

impl Backend {
    /// The name `shoal node --backend` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Microvm => "microvm",
            Backend::Namespace => "namespace",
        }
    }
}

/// Where the store goes (`store`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreChoice {
    /// A `SHOAL-STORE` partition when there is one, else RAM.
    Disk,
    Ram,
}

/// An amount of memory: all of it, a number of bytes, or a share of RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amount {
    All,
    Bytes(u64),
    /// Percent of RAM, 1 to 100.
    Percent(u8),
}

impl Amount {
    /// The bytes it stands for on a machine with `ram_bytes` of RAM.
    pub fn bytes(self, ram_bytes: u64) -> u64 {
        match self {
            Amount::All => ram_bytes,
            Amount::Bytes(b) => b.min(ram_bytes),
            Amount::Percent(p) => ram_bytes / 100 * u64::from(p),
        }
    }
}

/// Where the mesh key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeshKey {
    /// Neither `mesh_key` nor `mesh_key_file` is set.
    Missing,
    Inline([u8; 32]),
    /// A file on the `SHOAL` partition (relative to it), in `shoal mesh init`'s format or 64 hex
    /// digits.
    File(String),
}

/// Wi-Fi credentials (`[wifi]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wifi {
    pub ssid: String,
    pub psk: String,
}

/// `shoal.toml`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub mesh_key: MeshKey,
    pub join: Vec<libp2p::Multiaddr>,
    pub labels: BTreeMap<String, String>,
    /// Cores offered; 0 = all.
    pub cores: u32,
    pub memory: Amount,
    pub backend: Backend,
    pub store: StoreChoice,
    pub ram_store_max: Amount,
    pub ntp: Vec<String>,
    pub listen_port: u16,
    pub blobs_port: u16,
    /// None: chosen from the RAM (see [`Config::warm_vms_for`]).
    pub warm_vms: Option<usize>,
    pub wifi: Option<Wifi>,
}

/// RAM under which no microVM is kept warm by default, in bytes: a warm VM holds its memory.
pub const WARM_VMS_RAM_BYTES_MIN: u64 = 4 << 30;

impl Config {
    /// The `--warm-vms` for a machine with `ram_bytes` of RAM.
    pub fn warm_vms_for(&self, ram_bytes: u64) -> usize {
        self.warm_vms.unwrap_or(if ram_bytes < WARM_VMS_RAM_BYTES_MIN { 0 } else { 1 })
    }
}

impl Default for Config {
    fn default() -> Config {
        parse(DEFAULT_CONFIG).expect("the default shoal.toml parses")
    }
}

/// One problem in a `shoal.toml`, located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line and column (in characters); 0:0 when the parser gave no place.
    pub line: usize,
    pub col: usize,
    /// What is wrong and the fix.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shoal.toml:{}:{}: {}", self.line, self.col, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The file as written; `Spanned` where a value is checked after the TOML parse, to locate it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mesh_key: Option<Spanned<String>>,
    #[serde(default)]
    mesh_key_file: Option<Spanned<String>>,
    #[serde(default)]
    join: Vec<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    cores: Option<u32>,
    #[serde(default)]
    memory: Option<Spanned<String>>,
    #[serde(default)]
    backend: Option<Spanned<String>>,
    #[serde(default)]
    store: Option<Spanned<String>>,
    #[serde(default)]
    ram_store_max: Option<Spanned<String>>,
    #[serde(default)]
    ntp: Option<Vec<String>>,
    #[serde(default)]
    listen_port: Option<u16>,
    #[serde(default)]
    blobs_port: Option<u16>,
    #[serde(default)]
    warm_vms: Option<Spanned<usize>>,
    #[serde(default)]
    wifi: Option<RawWifi>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWifi {
    ssid: String,
    psk: String,
}

/// Parses `shoal.toml`. A UTF-8 byte-order mark and CRLF line ends (Notepad's) are accepted.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let (line, col) = e.span().map_or((0, 0), |s| line_col(text, s.start));
        ConfigError { line, col, message: explain_toml_error(e.message()) }
    })?;
    let at = |span: Range<usize>, message: String| {
        let (line, col) = line_col(text, span.start);
        ConfigError { line, col, message }
    };
    let mesh_key = match (raw.mesh_key.filter(|k| !k.get_ref().trim().is_empty()), raw.mesh_key_file) {
        (Some(_), Some(file)) => {
            return Err(at(file.span(), "both mesh_key and mesh_key_file are set; keep one of them".into()));
        }
        (Some(key), None) => MeshKey::Inline(parse_mesh_key(key.get_ref()).map_err(|m| at(key.span(), m))?),
        (None, Some(file)) if file.get_ref().trim().is_empty() => MeshKey::Missing,
        (None, Some(file)) => MeshKey::File(file.into_inner().trim().to_string()),
        (None, None) => MeshKey::Missing,
    };
    let join = raw
        .join
        .into_iter()
        .map(|a| parse_multiaddr(a.get_ref()).map_err(|m| at(a.span(), m)))
        .collect::<Result<Vec<_>, _>>()?;
    let memory = match raw.memory {
        None => Amount::All,
        Some(m) => parse_amount(m.get_ref(), false).map_err(|e| at(m.span(), format!("memory: {e}")))?,
    };
    let backend = match raw.backend {
        None => Backend::Microvm,
        Some(b) => parse_backend(b.get_ref()).map_err(|m| at(b.span(), m))?,
    };
    let store = match raw.store {
        None => StoreChoice::Disk,
        Some(s) => parse_store(s.get_ref()).map_err(|m| at(s.span(), m))?,
    };
    let ram_store_max = match raw.ram_store_max {
        None => Amount::Percent(40),
        Some(m) => parse_amount(m.get_ref(), true).map_err(|e| at(m.span(), format!("ram_store_max: {e}")))?,
    };
    let warm_vms = match raw.warm_vms {
        None => None,
        Some(w) => Some(check_warm_vms(*w.get_ref()).map_err(|m| at(w.span(), m))?),
    };
    Ok(Config {
        mesh_key,
        join,
        labels: raw.labels,
        cores: raw.cores.unwrap_or(0),
        memory,
        backend,
        store,
        ram_store_max,
        ntp: raw.ntp.unwrap_or_else(|| vec!["pool.ntp.org".into()]),
        listen_port: raw.listen_port.unwrap_or(7171),
        blobs_port: raw.blobs_port.unwrap_or(7172),
        warm_vms,
        wifi: raw.wifi.map(|w| Wifi { ssid: w.ssid, psk: w.psk }),
    })
}

/// An override from the kernel command line could not be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("kernel command line `shoal.{key}=...`: {message}")]
pub struct OverrideError {
    pub key: String,
    pub message: String,
}

/// `shoal.KEY=` words the image's own boot scripts read (live-image/initramfs-init and
/// rc.sysinit), not shoal.toml settings.
pub const CMDLINE_BOOT_KEYS: [&str; 3] = ["debug", "boot_wait_s", "overlay_mib"];

/// The `shoal.KEY=VALUE` words of a kernel command line that override shoal.toml, in order.
pub fn cmdline_overrides(cmdline: &str) -> Vec<(String, String)> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix(CMDLINE_PREFIX))
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| !CMDLINE_BOOT_KEYS.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Config {
    /// Applies one `shoal.KEY=VALUE` of the kernel command line. Lists (`join`, `ntp`) and
    /// `labels` (`room=b12,row=3`) are comma-separated and replace the file's.
    pub fn apply_override(&mut self, key: &str, value: &str) -> Result<(), OverrideError> {
        let err = |message: String| OverrideError { key: key.to_string(), message };
        let list = || value.split(',').map(str::trim).filter(|s| !s.is_empty());
        match key {
            "mesh_key" => self.mesh_key = MeshKey::Inline(parse_mesh_key(value).map_err(err)?),
            "mesh_key_file" => self.mesh_key = MeshKey::File(value.to_string()),
            "join" => self.join = list().map(parse_multiaddr).collect::<Result<_, _>>().map_err(err)?,
            "labels" => {
                let mut labels = BTreeMap::new();
                for pair in list() {
                    let (k, v) = pair.split_once('=').ok_or_else(|| err(format!("`{pair}`: write KEY=VALUE")))?;
                    labels.insert(k.to_string(), v.to_string());
                }
                self.labels = labels;
            }
            "cores" => self.cores = value.parse().map_err(|_| err("give a number of cores (0 = all)".into()))?,
            "memory" => self.memory = parse_amount(value, false).map_err(err)?,
            "backend" => self.backend = parse_backend(value).map_err(err)?,
            "store" => self.store = parse_store(value).map_err(err)?,
            "ram_store_max" => self.ram_store_max = parse_amount(value, true).map_err(err)?,
            "ntp" => self.ntp = list().map(str::to_string).collect(),
            "listen_port" => self.listen_port = value.parse().map_err(|_| err("give a port, 1 to 65535".into()))?,
            "blobs_port" => self.blobs_port = value.parse().map_err(|_| err("give a port, 1 to 65535".into()))?,
            "warm_vms" => {
                let n = value.parse().map_err(|_| err("give a number of VMs".into()))?;
                self.warm_vms = Some(check_warm_vms(n).map_err(err)?);
            }
            _ => return Err(err(unknown_key(key))),
        }
        Ok(())
    }
}

/// The key from 64 hex digits (spaces around them allowed).
pub fn parse_mesh_key(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let fix = "copy the last line of the mesh's key file (`shoal mesh init` wrote it): 64 hex digits";
    if text.len() != 64 {
        return Err(format!("the mesh key is {} characters, not 64; {fix}", text.chars().count()));
    }
    let bytes = hex::decode(text).map_err(|_| format!("the mesh key is not hex (0-9, a-f); {fix}"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| format!("the mesh key is not 32 bytes; {fix}"))
}

/// The key from a key file's text: `shoal mesh init`'s format, or 64 hex digits alone.
pub fn parse_mesh_key_file(text: &str) -> Result<[u8; 32], String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with("/key/") {
        return crate::mesh::keys::parse_psk(text).map_err(|e| e.to_string());
    }
    parse_mesh_key(text)
}

fn parse_multiaddr(text: &str) -> Result<libp2p::Multiaddr, String> {
    text.trim().parse().map_err(|_| {
        format!("`{text}` is not a multiaddr; write e.g. \"/ip4/192.168.1.10/tcp/7171/p2p/12D3Koo...\" (the join address the other node prints)")
    })
}

fn parse_backend(text: &str) -> Result<Backend, String> {
    match text.trim() {
        "microvm" => Ok(Backend::Microvm),
        "namespace" => Ok(Backend::Namespace),
        other => Err(format!("backend `{other}` is not known; write \"microvm\" or \"namespace\"")),
    }
}

fn parse_store(text: &str) -> Result<StoreChoice, String> {
    match text.trim() {
        "disk" => Ok(StoreChoice::Disk),
        "ram" => Ok(StoreChoice::Ram),
        other => Err(format!("store `{other}` is not known; write \"disk\" or \"ram\"")),
    }
}

/// `all`, a size (`2GiB`), or with `percent` also a share of RAM (`40%`).
fn parse_amount(text: &str, percent: bool) -> Result<Amount, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("all") {
        return Ok(Amount::All);
    }
    if let Some(p) = text.strip_suffix('%') {
        return match p.trim().parse::<u8>() {
            Ok(p @ 1..=100) if percent => Ok(Amount::Percent(p)),
            _ if !percent => Err(format!("`{text}`: write \"all\" or an amount such as \"2GiB\"")),
            _ => Err(format!("`{text}`: a share of RAM is 1% to 100%")),
        };
    }
    match shoal_dag::parse_size(text) {
        Ok(0) => Err(format!("`{text}` is zero; write an amount such as \"1GiB\"")),
        Ok(b) => Ok(Amount::Bytes(b)),
        Err(e) => Err(format!("`{text}`: {e}; write \"all\" or an amount such as \"1GiB\"")),
    }
}

fn check_warm_vms(n: usize) -> Result<usize, String> {
    let max = shoal_vm::microvm::WARM_PER_KIND_MAX;
    if n > max { Err(format!("warm_vms is {n}; give 0 to {max}")) } else { Ok(n) }
}

/// Turns the TOML parser's message into one that says the fix where it can.
fn explain_toml_error(message: &str) -> String {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((key, _)) = rest.split_once('`')
    {
        return unknown_key(key);
    }
    format!("{message} (see `shoal live default-config` for a correct file)")
}

fn unknown_key(key: &str) -> String {
    let nearest = KEYS.iter().min_by_key(|k| shoal_dag::edit_distance(key, k)).expect("KEYS is not empty");
    if shoal_dag::edit_distance(key, nearest) <= 3 {
        format!("unknown key `{key}`; did you mean `{nearest}`?")
    } else {
        format!("unknown key `{key}`; the keys are {}", KEYS.join(", "))
    }
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    /// `text`'s parse fails with exactly `expected` (`shoal.toml:LINE:COL: message`).
    fn check_err(text: &str, expected: &str) {
        match parse(text) {
            Ok(c) => panic!("{text:?} parsed: {c:?}"),
            Err(e) => assert_eq!(e.to_string(), expected, "for {text:?}"),
        }
    }

    #[test]
    fn the_default_config_parses_to_the_defaults() {
        let c = parse(DEFAULT_CONFIG).unwrap();
        assert_eq!(c.mesh_key, MeshKey::Missing);
        assert!(c.join.is_empty());
        assert_eq!((c.cores, c.memory, c.backend, c.store), (0, Amount::All, Backend::Microvm, StoreChoice::Disk));
        assert_eq!(c.ram_store_max, Amount::Percent(40));
        assert_eq!((c.listen_port, c.blobs_port, c.warm_vms, c.wifi), (7171, 7172, None, None));
        assert_eq!(c.ntp.len(), 3);
        // An empty file means the same.
        assert_eq!(parse("").unwrap().ram_store_max, c.ram_store_max);
    }

    #[test]
    fn every_line_of_the_default_config_is_a_comment_or_has_one_above() {
        let lines: Vec<&str> = DEFAULT_CONFIG.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            assert!(i > 0 && lines[i - 1].starts_with('#'), "line {} `{line}` has no comment above it", i + 1);
        }
    }

    #[test]
    fn a_file_saved_by_notepad_parses_bom_and_crlf() {
        let text = format!(
            "\u{feff}# edited on Windows\r\nmesh_key = \"{KEY}\"\r\njoin = [\"/ip4/10.0.0.5/tcp/7171\"]\r\nlabels = {{ room = \"b12\" }}\r\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.mesh_key, MeshKey::Inline(<[u8; 32]>::try_from(hex::decode(KEY).unwrap()).unwrap()));
        assert_eq!(c.join, vec!["/ip4/10.0.0.5/tcp/7171".parse::<libp2p::Multiaddr>().unwrap()]);
        assert_eq!(c.labels.get("room").map(String::as_str), Some("b12"));
        // A located error in such a file counts lines as the person sees them.
        check_err(
            "\u{feff}# x\r\n\r\nbackend = \"vm\"\r\n",
            "shoal.toml:3:11: backend `vm` is not known; write \"microvm\" or \"namespace\"",
        );
    }

    #[test]
    fn errors_name_the_place_and_the_fix() {
        check_err("jion = []\n", "shoal.toml:1:1: unknown key `jion`; did you mean `join`?");
        check_err("\n\nmeshkey = \"ab\"\n", "shoal.toml:3:1: unknown key `meshkey`; did you mean `mesh_key`?");
        check_err("colour = 1\n", &format!("shoal.toml:1:1: unknown key `colour`; the keys are {}", KEYS.join(", ")));
        check_err(
            "mesh_key = \"abc\"\n",
            "shoal.toml:1:12: the mesh key is 3 characters, not 64; copy the last line of the mesh's key file \
             (`shoal mesh init` wrote it): 64 hex digits",
        );
        let not_hex = format!("mesh_key = \"{}\"\n", "g".repeat(64));
        check_err(
            &not_hex,
            "shoal.toml:1:12: the mesh key is not hex (0-9, a-f); copy the last line of the mesh's key file \
             (`shoal mesh init` wrote it): 64 hex digits",
        );
        check_err(
            &format!("mesh_key = \"{KEY}\"\nmesh_key_file = \"k\"\n"),
            "shoal.toml:2:17: both mesh_key and mesh_key_file are set; keep one of them",
        );
        check_err(
            "join = [\"10.0.0.5:7171\"]\n",
            "shoal.toml:1:9: `10.0.0.5:7171` is not a multiaddr; write e.g. \"/ip4/192.168.1.10/tcp/7171/p2p/12D3Koo...\" \
             (the join address the other node prints)",
        );
        check_err("store = \"usb\"\n", "shoal.toml:1:9: store `usb` is not known; write \"disk\" or \"ram\"");
        check_err("memory = \"40%\"\n", "shoal.toml:1:10: memory: `40%`: write \"all\" or an amount such as \"2GiB\"");
        check_err("ram_store_max = \"0%\"\n", "shoal.toml:1:17: ram_store_max: `0%`: a share of RAM is 1% to 100%");
        check_err(
            "warm_vms = 1000\n",
            &format!("shoal.toml:1:12: warm_vms is 1000; give 0 to {}", shoal_vm::microvm::WARM_PER_KIND_MAX),
        );
        // The TOML parser's own errors keep its place and point at the reference.
        let e = parse("cores = \"two\"\n").unwrap_err();
        assert_eq!((e.line, e.col), (1, 9), "{e}");
        assert!(e.message.ends_with("(see `shoal live default-config` for a correct file)"), "{e}");
        let e = parse("a line that is not toml\n").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
    }

    #[test]
    fn amounts_resolve_against_the_ram() {
        assert_eq!(Amount::Percent(40).bytes(1000), 400);
        assert_eq!(Amount::Bytes(5000).bytes(1000), 1000);
        assert_eq!(Amount::All.bytes(1000), 1000);
        assert_eq!(parse("ram_store_max = \"1GiB\"").unwrap().ram_store_max, Amount::Bytes(1 << 30));
    }

    #[test]
    fn warm_vms_default_to_none_below_4_gib() {
        let c = Config::default();
        assert_eq!(c.warm_vms_for(2 << 30), 0);
        assert_eq!(c.warm_vms_for(8 << 30), 1);
        assert_eq!(parse("warm_vms = 2").unwrap().warm_vms_for(2 << 30), 2);
    }

    #[test]
    fn the_kernel_command_line_overrides_the_file() {
        let line = format!(
            "BOOT_IMAGE=/live/vmlinuz console=ttyS0,115200 shoal.join=/ip4/10.0.0.5/tcp/7171,/ip4/10.0.0.6/tcp/7171 \
             shoal.mesh_key={KEY} shoal.labels=room=b12,row=3 shoal.debug=1 shoal.store=ram quiet"
        );
        let overrides = cmdline_overrides(&line);
        assert_eq!(overrides.len(), 4);
        let mut c = Config::default();
        for (k, v) in &overrides {
            c.apply_override(k, v).unwrap();
        }
        assert_eq!(c.join.len(), 2);
        assert!(matches!(c.mesh_key, MeshKey::Inline(_)));
        assert_eq!(c.labels.len(), 2);
        assert_eq!(c.store, StoreChoice::Ram);
        assert_eq!(
            c.apply_override("jion", "x").unwrap_err().to_string(),
            "kernel command line `shoal.jion=...`: unknown key `jion`; did you mean `join`?"
        );
        assert_eq!(
            c.apply_override("labels", "room").unwrap_err().to_string(),
            "kernel command line `shoal.labels=...`: `room`: write KEY=VALUE"
        );
    }

    #[test]
    fn key_files_in_both_formats() {
        let key = [7u8; 32];
        let file = crate::mesh::keys::format_psk(&key);
        assert_eq!(parse_mesh_key_file(&file), Ok(key));
        assert_eq!(parse_mesh_key_file(&format!("\u{feff}{}\r\n", hex::encode(key))), Ok(key));
        assert!(parse_mesh_key_file("nonsense").is_err());
    }
}
