//! Data outside the mesh: `https:`/`http:` URLs and `s3://bucket/key` objects, as inputs a node
//! fetches (optionally pinned by hash) and as destinations a node uploads outputs to. Parsing,
//! pins and redaction live here; the transfers are the node's.
//!
//! A presigned URL is a secret: whoever holds it may read or write the object until it expires.
//! [`redact`] is the one form of a URL that records, logs, status and events show.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hash::Hash;

/// Longest URL a DAG may give, in bytes (S3 presigned URLs with a session token run to ~2 KB).
pub const URL_BYTES_MAX: usize = 8192;

/// What the fetched bytes of a URL must hash to (`#sha256=<hex>` or `#blake3=<hex>` after it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UrlPin {
    Sha256(String),
    Blake3(Hash),
}

impl fmt::Display for UrlPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlPin::Sha256(hex) => write!(f, "sha256={hex}"),
            UrlPin::Blake3(h) => write!(f, "blake3={}", h.to_hex()),
        }
    }
}

/// An object in a bucket: `s3://bucket/key`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct S3Object {
    pub bucket: String,
    pub key: String,
}

impl fmt::Display for S3Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// Where an output is sent after its job succeeds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadTarget {
    /// An `https:`/`http:` URL the node PUTs to (a presigned S3 PUT, a WebDAV server, ...).
    Url(String),
    /// An object written with the node's own credentials.
    S3(S3Object),
}

impl UploadTarget {
    /// The target as logs and records show it: [`redact`]ed.
    pub fn redacted(&self) -> String {
        match self {
            UploadTarget::Url(u) => redact(u),
            UploadTarget::S3(o) => o.to_string(),
        }
    }

    /// A URL whose secret was taken out ([`redact`]ed when the DAG entered a mesh): the node that
    /// pinned the DAG keeps the whole URL and sends this output itself.
    pub fn is_kept_elsewhere(&self) -> bool {
        match self {
            UploadTarget::Url(u) => {
                u.split_once('?').is_some_and(|(_, q)| q.split('&').any(|kv| kv.ends_with("=REDACTED")))
            }
            UploadTarget::S3(_) => false,
        }
    }

    /// The string a DAG file writes.
    pub fn as_written(&self) -> String {
        match self {
            UploadTarget::Url(u) => u.clone(),
            UploadTarget::S3(o) => o.to_string(),
        }
    }
}

/// The label a node carries when its credentials may write to `bucket`; a job that uploads
/// there requires it (`--label s3:<bucket>=write`).
pub fn bucket_label(bucket: &str) -> String {
    format!("s3:{bucket}")
}

/// Query parameters whose values are credentials or signatures (compared without case).
const SECRET_PARAMS: &[&str] = &[
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "signature",
    "awsaccesskeyid",
    "x-goog-signature",
    "x-goog-credential",
    "sig",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key",
    "password",
];

/// `url` with the values of its secret query parameters (signatures, credentials, tokens) and
/// any password in it replaced by `REDACTED`; what else it says (host, path, expiry) is kept.
pub fn redact(url: &str) -> String {
    let (head, fragment) = match url.split_once('#') {
        Some((h, f)) => (h, Some(f)),
        None => (url, None),
    };
    let (base, query) = match head.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (head, None),
    };
    let mut out = String::with_capacity(url.len());
    // `scheme://user:password@host/...`: the password goes.
    match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            out.push_str(scheme);
            out.push_str("://");
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split(':').next().unwrap_or("");
                    out.push_str(user);
                    out.push_str(":REDACTED@");
                    out.push_str(host);
                }
                None => out.push_str(authority),
            }
            out.push_str(path);
        }
        None => out.push_str(base),
    }
    if let Some(q) = query {
        out.push('?');
        let parts: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) => format!("{k}=REDACTED"),
                _ => kv.to_string(),
            })
            .collect();
        out.push_str(&parts.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// Whether `url` carries a secret [`redact`] would hide.
pub fn has_secret(url: &str) -> bool {
    redact(url) != url
}

/// A URL the DAG gives, split from its pin: checks the scheme, host and characters.
pub fn parse_url(s: &str) -> Result<(String, Option<UrlPin>), String> {
    if s.len() > URL_BYTES_MAX {
        return Err(format!("it is longer than {URL_BYTES_MAX} bytes"));
    }
    if s.chars().any(|c| c.is_control() || c == ' ') {
        return Err("it has a space or control character; percent-encode it (`%20`)".into());
    }
    let (url, fragment) = match s.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (s, None),
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("only `https://` and `http://` URLs are fetched")?;
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') {
        return Err("it has no host".into());
    }
    let pin = match fragment {
        None => None,
        Some(f) => Some(parse_pin(f)?),
    };
    Ok((url.to_string(), pin))
}

fn parse_pin(f: &str) -> Result<UrlPin, String> {
    let bad = || format!("`#{f}` is not a pin: write `#sha256=<64 hex>` or `#blake3=<64 hex>`");
    let (algo, hex) = f.split_once('=').ok_or_else(bad)?;
    let hex64 = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex64 {
        return Err(bad());
    }
    match algo {
        "sha256" => Ok(UrlPin::Sha256(hex.to_string())),
        "blake3" => Ok(UrlPin::Blake3(Hash::from_hex(hex).ok_or_else(bad)?)),
        _ => Err(bad()),
    }
}

/// `s3://bucket/key[#pin]`: bucket names as S3 allows them (3 to 63 of `a-z0-9.-`), a key of
/// at most 1024 bytes.
pub fn parse_s3(s: &str) -> Result<(S3Object, Option<UrlPin>), String> {
    let rest = s.strip_prefix("s3://").ok_or("an S3 object is `s3://<bucket>/<key>`")?;
    let (rest, pin) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(parse_pin(f)?)),
        None => (rest, None),
    };
    let (bucket, key) = rest.split_once('/').ok_or("it names a bucket but no key: write `s3://<bucket>/<key>`")?;
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && !bucket.starts_with(['.', '-'])
        && !bucket.ends_with(['.', '-']);
    if !bucket_ok {
        return Err(format!("`{bucket}` is not a bucket name (3 to 63 of lowercase letters, digits, `.` and `-`)"));
    }
    if key.is_empty() || key.len() > 1024 || key.chars().any(char::is_control) {
        return Err("the key is empty, longer than 1024 bytes or has a control character".into());
    }
    Ok((S3Object { bucket: bucket.to_string(), key: key.to_string() }, pin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_signatures_and_passwords_and_keeps_the_rest() {
        let u = "https://s3.example/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F2026&X-Amz-Date=20261207T000000Z&X-Amz-Expires=3600&X-Amz-Signature=abcdef";
        assert_eq!(
            redact(u),
            "https://s3.example/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED&X-Amz-Date=20261207T000000Z&X-Amz-Expires=3600&X-Amz-Signature=REDACTED"
        );
        assert_eq!(redact("http://me:hunter2@h:8/x"), "http://me:REDACTED@h:8/x");
        assert_eq!(redact("https://h/x?v=3#sha256=00"), "https://h/x?v=3#sha256=00");
        assert!(has_secret(u));
        assert!(!has_secret("https://h/x?v=3"));
    }

    #[test]
    fn urls_and_objects_parse_with_their_pins() {
        let hex = "a".repeat(64);
        assert_eq!(parse_url(&format!("https://h/x#sha256={hex}")).unwrap().1, Some(UrlPin::Sha256(hex.clone())));
        assert!(parse_url("ftp://h/x").is_err());
        assert!(parse_url("https:///x").is_err());
        assert!(parse_url("https://h/x#md5=00").is_err());
        let (o, pin) = parse_s3("s3://my-bucket/a/b.txt").unwrap();
        assert_eq!((o.bucket.as_str(), o.key.as_str(), pin), ("my-bucket", "a/b.txt", None));
        assert!(parse_s3("s3://B/x").is_err());
        assert!(parse_s3("s3://bucket").is_err());
    }
}
