//! Pulling from a registry over the OCI distribution API (blocking ureq, run on blocking
//! threads). Anonymous only: a 401 with a `Bearer` challenge is answered with a token from the
//! challenge's realm. Every blob's sha256 is checked while it streams.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::Digest as _;

use super::oci::{
    DOCKER_LIST, DOCKER_MANIFEST, ImportPlan, LayerPlan, LayerSource, Manifest, OCI_INDEX, OCI_MANIFEST, pick_platform,
    sha256_hex, sha256_of_digest,
};
use super::{ImageId, ProgressFn};
use crate::Store;
use crate::error::ImageError;

/// Largest manifest or config read into memory.
const MANIFEST_BYTES_MAX: u64 = 8 << 20;

/// How to pull.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullOptions {
    /// Speak plain http (always done for 127.0.0.1 and localhost).
    pub insecure_http: bool,
    /// The platform whose image an index's entries are picked for (default: this machine's).
    pub platform: Option<super::ImagePlatform>,
}

pub(crate) struct Reference {
    pub host: String,
    pub repo: String,
    /// A tag or `sha256:` digest.
    pub reference: String,
    /// The local tag to index the image under (none when pulled by digest).
    pub local_tag: Option<String>,
}

pub(crate) fn parse_reference(r: &str) -> Result<Reference, ImageError> {
    let bad = |why: &str| ImageError::format(r, format!("{why}; write `host:port/name:tag` or `name@sha256:<hex>`"));
    if r.is_empty() || r.contains(char::is_whitespace) {
        return Err(bad("not an image reference"));
    }
    let (name, reference, by_digest) = if let Some((n, d)) = r.split_once('@') {
        (n.to_owned(), d.to_owned(), true)
    } else {
        let last = r.rsplit('/').next().unwrap_or(r);
        match last.rsplit_once(':') {
            Some((_, t)) => (r[..r.len() - t.len() - 1].to_owned(), t.to_owned(), false),
            None => (r.to_owned(), "latest".to_owned(), false),
        }
    };
    if name.is_empty() || reference.is_empty() {
        return Err(bad("empty name or tag"));
    }
    let (first, rest) = name.split_once('/').unwrap_or(("", &name));
    let (host, repo) = if !first.is_empty() && (first.contains('.') || first.contains(':') || first == "localhost") {
        (first.to_owned(), rest.to_owned())
    } else if name.contains('/') {
        ("registry-1.docker.io".to_owned(), name.clone())
    } else {
        ("registry-1.docker.io".to_owned(), format!("library/{name}"))
    };
    let local_tag = (!by_digest).then(|| format!("{name}:{reference}"));
    Ok(Reference { host, repo, reference, local_tag })
}

pub(crate) struct RegistryClient {
    agent: ureq::Agent,
    base: String,
    repo: String,
    token: Mutex<Option<String>>,
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// The `key="value"` parameters of a `WWW-Authenticate: Bearer ...` challenge.
pub(crate) fn bearer_params(challenge: &str) -> Option<Vec<(String, String)>> {
    let rest = challenge.trim().strip_prefix("Bearer ").or_else(|| challenge.trim().strip_prefix("bearer "))?;
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        out.push((key.trim().to_owned(), value));
    }
    Some(out)
}

impl RegistryClient {
    pub fn new(r: &Reference, opts: &PullOptions) -> RegistryClient {
        let local = r.host.starts_with("127.") || r.host.starts_with("localhost") || r.host.starts_with("[::1]");
        let scheme = if opts.insecure_http || local { "http" } else { "https" };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .build();
        RegistryClient {
            agent: ureq::Agent::new_with_config(config),
            base: format!("{scheme}://{}", r.host),
            repo: r.repo.clone(),
            token: Mutex::new(None),
        }
    }

    fn fetch_token(&self, url: &str, challenge: &str) -> Result<(), ImageError> {
        let err = |reason: String| ImageError::Registry { url: url.to_owned(), reason };
        let params = bearer_params(challenge).ok_or_else(|| {
            err(format!("the registry asks for credentials (`{challenge}`); shoal pulls anonymously only: use a public image or a local registry"))
        })?;
        let get = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let realm = get("realm").ok_or_else(|| err(format!("the auth challenge `{challenge}` names no realm")))?;
        let mut req = self.agent.get(&realm);
        if let Some(s) = get("service") {
            req = req.query("service", s);
        }
        req = req.query("scope", get("scope").unwrap_or_else(|| format!("repository:{}:pull", self.repo)));
        let mut resp = req.call().map_err(|e| err(format!("token request to {realm}: {e}")))?;
        if !resp.status().is_success() {
            return Err(err(format!("token request to {realm}: HTTP {}", resp.status())));
        }
        let v: serde_json::Value = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_json()
            .map_err(|e| err(format!("token reply from {realm}: {e}")))?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| err(format!("the token reply from {realm} holds no token")))?;
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.to_owned());
        Ok(())
    }

    fn get(&self, path: &str, accept: &[&str]) -> Result<ureq::http::Response<ureq::Body>, ImageError> {
        let url = format!("{}/v2/{}/{path}", self.base, self.repo);
        for attempt in 0..2 {
            let mut req = self.agent.get(&url);
            if !accept.is_empty() {
                req = req.header("Accept", accept.join(", "));
            }
            if let Some(t) = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                req = req.header("Authorization", format!("Bearer {t}"));
            }
            let mut resp = req.call().map_err(|e| ImageError::Registry {
                url: url.clone(),
                reason: format!("{e}; check the host and port, and that the registry runs"),
            })?;
            let status = resp.status();
            if status.as_u16() == 401 && attempt == 0 {
                let challenge = header(&resp, "www-authenticate").unwrap_or_default();
                self.fetch_token(&url, &challenge)?;
                continue;
            }
            if !status.is_success() {
                let body = resp.body_mut().with_config().limit(4096).read_to_string().unwrap_or_default();
                let hint = if status.as_u16() == 404 { "; check the image name and tag" } else { "" };
                return Err(ImageError::Registry { url, reason: format!("HTTP {status}: {}{hint}", body.trim()) });
            }
            return Ok(resp);
        }
        Err(ImageError::Registry {
            url,
            reason: "still unauthorized with an anonymous token; the image may be private".into(),
        })
    }

    /// A manifest or index, checked against `reference` when that is a digest.
    pub fn manifest(&self, reference: &str) -> Result<Vec<u8>, ImageError> {
        let mut resp =
            self.get(&format!("manifests/{reference}"), &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])?;
        let bytes = resp.body_mut().with_config().limit(MANIFEST_BYTES_MAX).read_to_vec().map_err(|e| {
            ImageError::Registry {
                url: format!("{}/v2/{}/manifests/{reference}", self.base, self.repo),
                reason: e.to_string(),
            }
        })?;
        if reference.starts_with("sha256:") {
            let expected = sha256_of_digest(reference, reference)?;
            let actual = sha256_hex(&bytes);
            if actual != expected {
                return Err(ImageError::DigestMismatch { what: format!("manifest {reference}"), expected, actual });
            }
        }
        Ok(bytes)
    }

    /// A small blob (a config), checked.
    pub fn blob_bytes(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let expected = sha256_of_digest(digest, digest)?;
        let mut resp = self.get(&format!("blobs/{digest}"), &[])?;
        let bytes = resp.body_mut().with_config().limit(MANIFEST_BYTES_MAX).read_to_vec().map_err(|e| {
            ImageError::Registry {
                url: format!("{}/v2/{}/blobs/{digest}", self.base, self.repo),
                reason: e.to_string(),
            }
        })?;
        let actual = sha256_hex(&bytes);
        if actual != expected {
            return Err(ImageError::DigestMismatch { what: format!("blob {digest}"), expected, actual });
        }
        Ok(bytes)
    }

    /// Streams blob `digest` (sha256 hex) into `dest`, checking its sha256 as it goes.
    pub fn download_blob(&self, hex: &str, dest: &Path, mut on_progress: impl FnMut(u64)) -> Result<(), ImageError> {
        let digest = format!("sha256:{hex}");
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, self.repo);
        let mut resp = self.get(&format!("blobs/{digest}"), &[])?;
        let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
        let mut file = std::fs::File::create(dest).map_err(ImageError::io("cannot create", dest))?;
        let mut sha = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ImageError::Registry { url, reason: format!("reading the blob: {e}") }),
            };
            sha.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(ImageError::io("cannot write", dest))?;
            done += n as u64;
            on_progress(done);
        }
        file.sync_all().map_err(ImageError::io("cannot write", dest))?;
        let actual = hex::encode(sha.finalize());
        if actual != hex {
            return Err(ImageError::DigestMismatch {
                what: format!("blob {digest} from {url}"),
                expected: hex.to_owned(),
                actual,
            });
        }
        Ok(())
    }
}

impl Store {
    /// Pulls `reference` (`host:port/name:tag`, `name@sha256:...`) from its registry and indexes
    /// it under the reference as written (a digest reference gets no tag).
    pub async fn pull(&self, reference: &str, opts: PullOptions) -> Result<ImageId, ImageError> {
        self.pull_with_progress(reference, opts, None).await
    }

    pub async fn pull_with_progress(
        &self,
        reference: &str,
        opts: PullOptions,
        progress: Option<ProgressFn>,
    ) -> Result<ImageId, ImageError> {
        let r = parse_reference(reference)?;
        let client = Arc::new(RegistryClient::new(&r, &opts));
        let (c, source, want) = (client.clone(), reference.to_owned(), r.reference.clone());
        let platform = opts.platform.clone();
        let (manifest, config, layers) = tokio::task::spawn_blocking(move || -> Result<_, ImageError> {
            let mut raw = c.manifest(&want)?;
            for _ in 0..4 {
                let m: Manifest =
                    serde_json::from_slice(&raw).map_err(|e| ImageError::format(&source, format!("manifest: {e}")))?;
                if m.is_index() {
                    let d = pick_platform(&m, &source, platform.as_ref())?.digest.clone();
                    raw = c.manifest(&d)?;
                    continue;
                }
                let config_desc = m.config.ok_or_else(|| ImageError::format(&source, "the manifest has no config"))?;
                let config = c.blob_bytes(&config_desc.digest)?;
                let mut layers = Vec::new();
                for l in m.layers {
                    layers.push((sha256_of_digest(&l.digest, &source)?, l.size));
                }
                return Ok((raw, config, layers));
            }
            Err(ImageError::format(&source, "image indexes nest more than 4 deep"))
        })
        .await
        .map_err(|e| ImageError::format(reference, e.to_string()))??;
        let plan = ImportPlan {
            source_name: reference.to_owned(),
            manifest: Some(manifest),
            config,
            layers: layers
                .into_iter()
                .map(|(digest, size)| LayerPlan {
                    digest: Some(digest),
                    size,
                    source: LayerSource::Registry(client.clone()),
                })
                .collect(),
            tag: r.local_tag,
        };
        super::oci::check_platform(&plan, opts.platform.as_ref())?;
        self.run_import(plan, progress).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = parse_reference("127.0.0.1:5000/tools/busybox:1.35").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repo.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "tools/busybox", "1.35")
        );
        assert_eq!(r.local_tag.as_deref(), Some("127.0.0.1:5000/tools/busybox:1.35"));
        let r = parse_reference("localhost:5000/busybox").unwrap();
        assert_eq!((r.host.as_str(), r.repo.as_str(), r.reference.as_str()), ("localhost:5000", "busybox", "latest"));
        let r = parse_reference("busybox").unwrap();
        assert_eq!((r.host.as_str(), r.repo.as_str()), ("registry-1.docker.io", "library/busybox"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("quay.io/x/y@{d}")).unwrap();
        assert_eq!((r.host.as_str(), r.repo.as_str(), r.reference.as_str()), ("quay.io", "x/y", d.as_str()));
        assert_eq!(r.local_tag, None);
    }

    #[test]
    fn bearer_challenge() {
        let p = bearer_params(
            r#"Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[1], ("service".into(), "reg.example".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull".into()));
        assert!(bearer_params("Basic realm=\"x\"").is_none());
    }
}
