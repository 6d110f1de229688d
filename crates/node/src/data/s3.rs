//! `s3://` with the user's own credentials, found where the AWS tools look: the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_PROFILE`,
//! `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`), then the
//! profile's section of the credentials file (`AWS_SHARED_CREDENTIALS_FILE`, default
//! `~/.aws/credentials`) and of the config file (`AWS_CONFIG_FILE`, default `~/.aws/config`:
//! `region`, `endpoint_url`). The node signs with SigV4 itself, presigning each request
//! (rusty-s3, sans-IO: no SDK, no second HTTP stack). Credentials stay in this struct: it has no
//! `Debug` that would print them, and nothing writes them anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use shoal_dag::S3Object;

/// How long a URL the node presigns for its own request stays valid.
pub const PRESIGN_OWN_REQUEST: Duration = Duration::from_secs(3600);
/// Longest presign `shoal s3 presign` makes (SigV4's own limit: 7 days).
pub const PRESIGN_MAX: Duration = Duration::from_secs(7 * 86_400);

/// Where the node's S3 requests go and who signs them.
pub struct S3Config {
    credentials: Option<Credentials>,
    /// Where the credentials came from, for messages (never the credentials).
    pub source: String,
    pub region: String,
    pub endpoint: url::Url,
    style: UrlStyle,
}

/// A request the node makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    Put,
}

impl S3Config {
    /// The configuration this process's environment and files give.
    pub fn from_environment() -> Result<S3Config> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = env("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let creds_file = env("AWS_SHARED_CREDENTIALS_FILE").map(PathBuf::from).unwrap_or(home.join(".aws/credentials"));
        let config_file = env("AWS_CONFIG_FILE").map(PathBuf::from).unwrap_or(home.join(".aws/config"));
        let creds_section = read_ini(&creds_file)?.remove(&profile).unwrap_or_default();
        let config_section = {
            let mut ini = read_ini(&config_file)?;
            let key = if profile == "default" { "default".to_string() } else { format!("profile {profile}") };
            ini.remove(&key).unwrap_or_default()
        };
        let (credentials, source) = match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(k), Some(s)) => (Some(with_token(k, s, env("AWS_SESSION_TOKEN"))), "the environment".to_string()),
            _ => match (creds_section.get("aws_access_key_id"), creds_section.get("aws_secret_access_key")) {
                (Some(k), Some(s)) => (
                    Some(with_token(k.clone(), s.clone(), creds_section.get("aws_session_token").cloned())),
                    format!("profile `{profile}` of {}", creds_file.display()),
                ),
                _ => (None, "none".to_string()),
            },
        };
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| config_section.get("region").cloned())
            .unwrap_or_else(|| "us-east-1".into());
        let custom = env("AWS_ENDPOINT_URL_S3")
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| config_section.get("endpoint_url").cloned());
        let (endpoint, style) = match custom {
            // S3-compatible servers (MinIO, Ceph, s3s) are addressed by path.
            Some(e) => (e.parse().with_context(|| format!("the S3 endpoint `{e}` is not a URL"))?, UrlStyle::Path),
            None => (
                format!("https://s3.{region}.amazonaws.com").parse().expect("a valid URL"),
                UrlStyle::VirtualHost,
            ),
        };
        Ok(S3Config { credentials, source, region, endpoint, style })
    }

    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    fn credentials(&self) -> Result<&Credentials> {
        self.credentials.as_ref().ok_or_else(|| {
            anyhow!(
                "no AWS credentials on this node: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or put them in \
                 ~/.aws/credentials (profile AWS_PROFILE, default `default`)"
            )
        })
    }

    pub fn bucket(&self, name: &str) -> Result<Bucket> {
        Bucket::new(self.endpoint.clone(), self.style, name.to_string(), self.region.clone())
            .map_err(|e| anyhow!("bucket `{name}` at {}: {e}", self.endpoint))
    }

    /// A presigned URL for `verb` on `object`, valid for `expires`.
    pub fn presign(&self, verb: Verb, object: &S3Object, expires: Duration) -> Result<String> {
        if expires > PRESIGN_MAX {
            bail!("a presigned URL lasts at most 7 days (SigV4's limit)");
        }
        let creds = self.credentials()?;
        let bucket = self.bucket(&object.bucket)?;
        Ok(match verb {
            Verb::Get => bucket.get_object(Some(creds), &object.key).sign(expires),
            Verb::Put => bucket.put_object(Some(creds), &object.key).sign(expires),
        }
        .to_string())
    }

    /// The presigned requests of a multipart upload.
    pub fn create_multipart(&self, object: &S3Object) -> Result<String> {
        let bucket = self.bucket(&object.bucket)?;
        Ok(bucket.create_multipart_upload(Some(self.credentials()?), &object.key).sign(PRESIGN_OWN_REQUEST).to_string())
    }

    pub fn upload_part(&self, object: &S3Object, part: u16, upload_id: &str) -> Result<String> {
        let bucket = self.bucket(&object.bucket)?;
        Ok(bucket
            .upload_part(Some(self.credentials()?), &object.key, part, upload_id)
            .sign(PRESIGN_OWN_REQUEST)
            .to_string())
    }

    /// The URL and XML body that complete a multipart upload of these parts' ETags.
    pub fn complete_multipart(&self, object: &S3Object, upload_id: &str, etags: &[String]) -> Result<(String, String)> {
        let bucket = self.bucket(&object.bucket)?;
        let action = bucket.complete_multipart_upload(
            Some(self.credentials()?),
            &object.key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(PRESIGN_OWN_REQUEST).to_string();
        Ok((url, action.body()))
    }

    pub fn abort_multipart(&self, object: &S3Object, upload_id: &str) -> Result<String> {
        let bucket = self.bucket(&object.bucket)?;
        Ok(bucket
            .abort_multipart_upload(Some(self.credentials()?), &object.key, upload_id)
            .sign(PRESIGN_OWN_REQUEST)
            .to_string())
    }
}

/// The upload id of a CreateMultipartUpload response.
pub fn parse_upload_id(xml: &str) -> Result<String> {
    rusty_s3::actions::CreateMultipartUpload::parse_response(xml)
        .map(|r| r.upload_id().to_string())
        .map_err(|e| anyhow!("the server's reply to CreateMultipartUpload does not parse: {e}"))
}

fn with_token(key: String, secret: String, token: Option<String>) -> Credentials {
    match token {
        Some(t) => Credentials::new_with_token(key, secret, t),
        None => Credentials::new(key, secret),
    }
}

/// The sections of an INI file (the AWS tools' format): `[name]`, `key = value`, `#` and `;`
/// comments. A file that is not there is empty.
fn read_ini(path: &Path) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(anyhow!("reading {}: {e}", path.display())),
    };
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim().to_string());
            continue;
        }
        if let (Some(s), Some((k, v))) = (&section, line.split_once('=')) {
            out.entry(s.clone()).or_default().insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_sections_and_profiles_read_as_the_aws_tools_read_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        std::fs::write(&p, "# c\n[default]\nregion = eu-west-1\n[profile lab]\nendpoint_url=http://127.0.0.1:9000\n").unwrap();
        let ini = read_ini(&p).unwrap();
        assert_eq!(ini["default"]["region"], "eu-west-1");
        assert_eq!(ini["profile lab"]["endpoint_url"], "http://127.0.0.1:9000");
        assert!(read_ini(&dir.path().join("none")).unwrap().is_empty());
    }
}
