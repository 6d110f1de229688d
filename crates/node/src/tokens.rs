//! API tokens: `shoal token create/ls/revoke` and what a node checks a bearer token against.
//!
//! Tokens live in `$SHOAL_HOME/tokens.json` (mode 0600), not in the store's sled database: a
//! running node holds sled's lock, and the operator must be able to create and revoke tokens while
//! it runs (the node re-reads the file when it changes, so a revocation counts from the next
//! request). Only the BLAKE3 hash of each secret is kept; the secret is printed once. When a token
//! was last used is written by the node to `tokens-used.json` beside it, so the CLI and the node
//! never write the same file. Writers take `tokens.lock` (flock) and replace the file by rename.

use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::clock::now_unix_ms;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

/// The token list, in the store's home.
pub const TOKENS_FILE: &str = "tokens.json";
/// When each token was last used (written by the node).
pub const TOKENS_USED_FILE: &str = "tokens-used.json";
/// Taken (flock) by whoever rewrites the token list.
const TOKENS_LOCK_FILE: &str = "tokens.lock";
/// What every secret starts with, so secret scanners and people recognize one.
pub const SECRET_PREFIX: &str = "shoal_";
/// Random bytes in a secret.
const SECRET_BYTES: usize = 32;
/// Longest token name, in characters.
const NAME_CHARS_MAX: usize = 64;
/// Tokens one home may hold (each request compares against every one).
pub const TOKENS_MAX: usize = 1024;

/// What a token may do; each scope includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read: DAG status, records, blobs, outputs, events, peers, metrics.
    Read,
    /// Read, and submit DAGs, upload blobs, cancel, run in the explorer.
    Submit,
    /// Everything, test hooks included.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One token as stored: never its secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredToken {
    pub name: String,
    pub scope: Scope,
    /// BLAKE3 of the secret, hex.
    pub blake3: String,
    pub created_unix_ms: u64,
    pub expires_unix_ms: Option<u64>,
}

impl StoredToken {
    pub fn hash(&self) -> Option<blake3::Hash> {
        blake3::Hash::from_hex(&self.blake3).ok()
    }
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    version: u32,
    tokens: Vec<StoredToken>,
}

pub fn tokens_path(home: &Path) -> PathBuf {
    home.join(TOKENS_FILE)
}

/// The hash a secret is stored and looked up by.
pub fn hash_secret(secret: &str) -> blake3::Hash {
    blake3::hash(secret.as_bytes())
}

/// Reads the token list; none when the file does not exist. A file others may write is refused:
/// whoever can write it can give themselves a token.
pub fn load(home: &Path) -> Result<Vec<StoredToken>> {
    let path = tokens_path(home);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mode = std::fs::metadata(&path).map(|m| m.permissions().mode()).unwrap_or(0);
    if mode & 0o022 != 0 {
        bail!(
            "{} can be written by other users (mode {:o}), so anyone could add a token: `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    let file: TokenFile = serde_json::from_str(&text).with_context(|| {
        format!("{} is not a token list; fix it, or remove it and create the tokens again", path.display())
    })?;
    if file.version != 1 {
        bail!("{}: version {} is not one this shoal reads (1)", path.display(), file.version);
    }
    Ok(file.tokens)
}

/// When each token was last used, as the node wrote it.
pub fn load_used(home: &Path) -> BTreeMap<String, u64> {
    std::fs::read_to_string(home.join(TOKENS_USED_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Writes the node's last-used times (merged over what is there).
pub fn save_used(home: &Path, used: &BTreeMap<String, u64>) -> Result<()> {
    let mut all = load_used(home);
    for (name, at) in used {
        let e = all.entry(name.clone()).or_default();
        *e = (*e).max(*at);
    }
    crate::identity::write_private(&home.join(TOKENS_USED_FILE), serde_json::to_string_pretty(&all)?.as_bytes())
}

/// Holds `tokens.lock` while a read-modify-write of the list runs.
struct ListLock {
    /// Open for as long as the lock is held (closing it releases the flock).
    _file: std::fs::File,
}

impl ListLock {
    fn take(home: &Path) -> Result<ListLock> {
        std::fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
        let path = home.join(TOKENS_LOCK_FILE);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // flock(2), released when the file closes.
        f.lock().with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(ListLock { _file: f })
    }
}

fn save(home: &Path, tokens: Vec<StoredToken>, _lock: &ListLock) -> Result<()> {
    let file = TokenFile { version: 1, tokens };
    crate::identity::write_private(&tokens_path(home), serde_json::to_string_pretty(&file)?.as_bytes())
}

/// Letters, digits, `.`, `_`, `-`; 1 to [`NAME_CHARS_MAX`].
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= NAME_CHARS_MAX
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        bail!("token name `{name}`: use 1 to {NAME_CHARS_MAX} letters, digits, `.`, `_` or `-`");
    }
    Ok(())
}

/// Makes a token; returns it and its secret (shown once, never stored).
pub fn create(home: &Path, name: &str, scope: Scope, expires: Option<Duration>) -> Result<(StoredToken, String)> {
    check_name(name)?;
    let lock = ListLock::take(home)?;
    let mut tokens = load(home)?;
    if tokens.iter().any(|t| t.name == name) {
        bail!("a token named `{name}` exists; revoke it first (`shoal token revoke {name}`) or choose another name");
    }
    if tokens.len() >= TOKENS_MAX {
        bail!("this home holds {TOKENS_MAX} tokens, the most it may; revoke some first");
    }
    let mut bytes = [0u8; SECRET_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let secret = format!("{SECRET_PREFIX}{}", hex::encode(bytes));
    let now = now_unix_ms();
    let token = StoredToken {
        name: name.to_string(),
        scope,
        blake3: hash_secret(&secret).to_hex().to_string(),
        created_unix_ms: now,
        expires_unix_ms: expires.map(|d| now.saturating_add(d.as_millis() as u64)),
    };
    tokens.push(token.clone());
    save(home, tokens, &lock)?;
    Ok((token, secret))
}

/// Removes a token: it is refused from the next request on.
pub fn revoke(home: &Path, name: &str) -> Result<()> {
    let lock = ListLock::take(home)?;
    let mut tokens = load(home)?;
    let before = tokens.len();
    tokens.retain(|t| t.name != name);
    if tokens.len() == before {
        let names: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
        bail!(
            "no token is named `{name}`; {}",
            if names.is_empty() { "there are none".to_string() } else { format!("there are: {}", names.join(", ")) }
        );
    }
    save(home, tokens, &lock)
}

/// `30d`, `12h`, `90m`, `45s`, `2w`: a positive whole number and a unit.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| anyhow!("`{text}` is not a duration; write e.g. 30d, 12h, 90m or 45s"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => bail!("`{text}`: the unit is s, m, h, d or w (e.g. 30d)"),
    };
    if n == 0 {
        bail!("`{text}`: a token that expires at once is no token; give a positive duration");
    }
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(|| anyhow!("`{text}` is too long"))
}

/// A token secret given to the CLI: `--token-file PATH`, else `$SHOAL_TOKEN`.
pub fn client_secret(token_file: Option<&Path>) -> Result<Option<String>> {
    if let Some(path) = token_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read the token file {}", path.display()))?;
        let secret = text.trim().to_string();
        if secret.is_empty() {
            bail!("the token file {} is empty; put the secret `shoal token create` printed in it", path.display());
        }
        return Ok(Some(secret));
    }
    Ok(std::env::var("SHOAL_TOKEN").ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let check = |text: &str, secs: Option<u64>| {
            assert_eq!(parse_duration(text).ok().map(|d| d.as_secs()), secs, "{text}");
        };
        check("30d", Some(30 * 86_400));
        check("12h", Some(43_200));
        check("90m", Some(5_400));
        check("45s", Some(45));
        check("2w", Some(14 * 86_400));
        check("0d", None);
        check("d", None);
        check("10", None);
        check("1y", None);
        check("-1d", None);
    }

    #[test]
    fn create_list_revoke_keep_only_the_hash() {
        let home = tempfile::tempdir().unwrap();
        let (t, secret) = create(home.path(), "ci", Scope::Submit, Some(Duration::from_secs(60))).unwrap();
        assert!(secret.starts_with(SECRET_PREFIX) && secret.len() == SECRET_PREFIX.len() + 64);
        let text = std::fs::read_to_string(tokens_path(home.path())).unwrap();
        assert!(!text.contains(&secret) && text.contains(&hash_secret(&secret).to_hex().to_string()));
        let mode = std::fs::metadata(tokens_path(home.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(t.expires_unix_ms.unwrap() > t.created_unix_ms);
        assert!(create(home.path(), "ci", Scope::Read, None).is_err(), "names are unique");
        assert!(create(home.path(), "a b", Scope::Read, None).is_err());
        assert_eq!(load(home.path()).unwrap().len(), 1);
        assert!(revoke(home.path(), "nope").unwrap_err().to_string().contains("there are: ci"));
        revoke(home.path(), "ci").unwrap();
        assert!(load(home.path()).unwrap().is_empty());
        std::fs::set_permissions(tokens_path(home.path()), std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(load(home.path()).unwrap_err().to_string().contains("chmod 600"));
    }
}
