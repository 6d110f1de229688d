//! Data where users keep it: URL and `s3://` inputs the node fetches into the store (the job
//! never has the network for them), and outputs the node uploads to URLs and buckets after the
//! job. Blocking HTTP (ureq) on tokio's blocking threads, streamed: a download goes from the
//! socket into the store, an upload from the store onto the socket, never whole in memory.
//!
//! - `fetch` (here): GET with a size limit, a per-read timeout and retries with backoff.
//! - [`upload`]: PUT, multipart past a threshold, and the upload records.
//! - [`s3`]: credentials, endpoints and SigV4 presigning.

pub mod s3;
pub mod upload;

use std::io::Read;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Result, anyhow};
use shoal_blobs::Store;
use shoal_dag::location::redact;
use shoal_dag::{Digest, DigestKind, Hash, S3Object, UrlPin};

use s3::{S3Config, Verb};

/// Most bytes of a reply's body read for an error message.
const ERROR_BODY_BYTES_MAX: u64 = 4096;
/// Wait before the second attempt; doubled for each one after, up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(8);

/// S3's smallest part of a multipart upload (all but the last), bytes.
pub const S3_PART_BYTES_MIN: u64 = 5 << 20;

/// Limits of the node's transfers (`shoal run` and `shoal node` flags).
#[derive(Clone, Debug)]
pub struct TransferLimits {
    /// Largest URL or object a node fetches, bytes (`--fetch-size-max`).
    pub fetch_bytes_max: u64,
    /// Longest wait for the server on one connect, read or write, ms (a stalled transfer fails
    /// after it and is retried).
    pub timeout_ms: u64,
    /// Tries of one transfer, the first included.
    pub attempts: u32,
    /// Objects larger than this go to `s3://` in parts, bytes (S3's single PUT takes 5 GiB).
    pub multipart_above_bytes: u64,
    /// Size of each part of a multipart upload, bytes (the last may be smaller; at least
    /// [`S3_PART_BYTES_MIN`]).
    pub part_bytes: u64,
}

impl Default for TransferLimits {
    fn default() -> Self {
        TransferLimits {
            fetch_bytes_max: 64 << 30,
            timeout_ms: 30_000,
            attempts: 4,
            multipart_above_bytes: 5 << 30,
            part_bytes: 64 << 20,
        }
    }
}

/// The node's HTTP client and S3 configuration, one per runner.
pub struct Transfers {
    pub limits: TransferLimits,
    agent: ureq::Agent,
    s3: OnceLock<Result<S3Config, String>>,
}

/// Why one attempt failed, and whether another may do better.
pub(crate) enum Attempt {
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

impl Transfers {
    pub fn new(limits: TransferLimits) -> Transfers {
        let t = Some(Duration::from_millis(limits.timeout_ms));
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(t)
            .timeout_per_read(t)
            .timeout_per_write(t)
            .max_redirects(5)
            .build();
        Transfers { limits, agent: ureq::Agent::new_with_config(config), s3: OnceLock::new() }
    }

    /// The S3 configuration of this process's environment, read once.
    pub fn s3(&self) -> Result<&S3Config> {
        self.s3
            .get_or_init(|| S3Config::from_environment().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("{e}"))
    }

    pub(crate) fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    /// The bytes of a URL, or of an object read with this node's credentials, in `store`,
    /// checked against `pin`. A pinned blob the store already holds is not fetched again.
    pub async fn fetch(&self, store: &Store, source: &Source, pin: Option<&UrlPin>) -> Result<Digest> {
        match pin {
            Some(UrlPin::Blake3(h)) if store.has(*h).await? => return crate::run::digest_of_stored(store, *h).await,
            Some(UrlPin::Sha256(hex)) => {
                if let Some(h) = store.by_sha256(hex)? {
                    return crate::run::digest_of_stored(store, h).await;
                }
            }
            _ => {}
        }
        let (url, shown) = match source {
            Source::Url(u) => (u.clone(), redact(u)),
            Source::S3(o) => (self.s3()?.presign(Verb::Get, o, s3::PRESIGN_OWN_REQUEST)?, o.to_string()),
        };
        let (hash, size, sha) = self.retrying(&shown, || self.get_once(store, &url, &shown)).await?;
        let mismatch = match pin {
            Some(UrlPin::Blake3(want)) if *want != hash => Some((format!("{want}"), format!("{hash}"))),
            Some(UrlPin::Sha256(want)) if *want != sha => Some((format!("sha256:{want}"), format!("sha256:{sha}"))),
            _ => None,
        };
        if let Some((want, got)) = mismatch {
            return Err(anyhow!(
                "the bytes at {shown} are not the pinned ones: the DAG pins {want}, and the {size} bytes fetched hash \
                 to {got}; the server changed them since the DAG was written, or the pin is wrong"
            ));
        }
        tracing::info!(source = %shown, %hash, size, "fetched");
        Ok(Digest { hash, kind: DigestKind::File, size })
    }

    /// `attempt` until it succeeds, fails for good, or [`TransferLimits::attempts`] are spent,
    /// waiting longer between each.
    pub(crate) async fn retrying<T, F, Fut>(&self, shown: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Attempt>>,
    {
        let mut wait = BACKOFF_FIRST;
        let attempts = self.limits.attempts.max(1);
        for n in 1..=attempts {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(e)) if n == attempts => {
                    return Err(e.context(format!("{shown}: gave up after {attempts} attempts")));
                }
                Err(Attempt::Retry(e)) => {
                    tracing::warn!(source = %shown, attempt = n, "{e:#}; trying again in {} ms", wait.as_millis());
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(BACKOFF_MAX);
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn get_once(&self, store: &Store, url: &str, shown: &str) -> Result<(Hash, u64, String), Attempt> {
        let agent = self.agent.clone();
        let owned = url.to_string();
        let resp = tokio::task::spawn_blocking(move || agent.get(&owned).call())
            .await
            .map_err(|e| Attempt::Fatal(anyhow!("{e}")))?
            .map_err(|e| Attempt::Retry(anyhow!("fetching {shown}: {e}")))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(status_error("fetching", shown, url, resp));
        }
        let max = self.limits.fetch_bytes_max;
        if let Some(len) = resp.body().content_length()
            && len > max
        {
            return Err(Attempt::Fatal(too_large(shown, Some(len), max)));
        }
        let reader = Capped { inner: resp.into_body().into_with_config().limit(u64::MAX).reader(), left: max };
        store.put_reader(reader).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::FileTooLarge {
                Attempt::Fatal(too_large(shown, None, max))
            } else {
                Attempt::Retry(anyhow!("fetching {shown}: {e}"))
            }
        })
    }
}

/// Where an input's bytes are.
#[derive(Clone, Debug)]
pub enum Source {
    Url(String),
    S3(S3Object),
}

fn too_large(shown: &str, len: Option<u64>, max: u64) -> anyhow::Error {
    let says = len.map(|l| format!(" ({l} bytes)")).unwrap_or_default();
    anyhow!(
        "{shown}{says} is larger than this node fetches, {max} bytes; raise --fetch-size-max (of `shoal run` or \
         `shoal node`), or have a job fetch it with network"
    )
}

/// A reader that fails with `FileTooLarge` past `left` bytes.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, "over the fetch limit"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// What a reply that is not a success means, read from its status and its body (an S3 error's
/// `<Code>` and `<Message>`); an expired presigned URL says when it expired.
pub(crate) fn status_error(doing: &str, shown: &str, url: &str, mut resp: ureq::http::Response<ureq::Body>) -> Attempt {
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    let _ = resp.body_mut().as_reader().take(ERROR_BODY_BYTES_MAX).read_to_end(&mut body);
    let body = String::from_utf8_lossy(&body);
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&format!("</{t}>"))? + start;
        Some(body[start..end].to_string())
    };
    let said = match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!(": {c}: {m}"),
        (Some(c), None) => format!(": {c}"),
        _ => String::new(),
    };
    let e = match status {
        404 | 410 => anyhow!("{doing} {shown}: not found (HTTP {status}){said}; check the URL, or that the object exists"),
        403 => match presign_expiry(url) {
            Some((expired_at, expired)) if expired => anyhow!(
                "{doing} {shown}: forbidden (HTTP 403): the presigned URL expired at {expired_at}; presign a new one (`shoal s3 presign`)"
            ),
            _ => anyhow!(
                "{doing} {shown}: forbidden (HTTP 403){said}; the signature or the credentials are not accepted, or they may not do this"
            ),
        },
        401 => anyhow!("{doing} {shown}: unauthorized (HTTP 401){said}"),
        408 | 429 | 500..=599 => return Attempt::Retry(anyhow!("{doing} {shown}: HTTP {status}{said}")),
        _ => anyhow!("{doing} {shown}: HTTP {status}{said}"),
    };
    Attempt::Fatal(e)
}

/// When a SigV4 presigned URL expires (`X-Amz-Date` + `X-Amz-Expires`), as RFC 3339, and
/// whether that is past.
fn presign_expiry(url: &str) -> Option<(String, bool)> {
    let query = url.split_once('?')?.1;
    let param = |k: &str| {
        query.split('&').find_map(|kv| kv.split_once('=').filter(|(key, _)| key.eq_ignore_ascii_case(k)).map(|(_, v)| v))
    };
    let date = param("X-Amz-Date")?;
    let expires: u64 = param("X-Amz-Expires")?.parse().ok()?;
    let signed = parse_amz_date(date)?;
    let at = signed + expires;
    let now = crate::clock::now_unix_ms() / 1000;
    Some((rfc3339(at), now >= at))
}

/// `20261207T101500Z` as Unix seconds.
fn parse_amz_date(d: &str) -> Option<u64> {
    if d.len() != 16 || &d[8..9] != "T" || !d.ends_with('Z') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| d.get(r)?.parse::<i64>().ok();
    let (y, m, day, hh, mm, ss) = (n(0..4)?, n(4..6)?, n(6..8)?, n(9..11)?, n(11..13)?, n(13..15)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Unix seconds as `2026-12-07T10:15:00Z`.
pub fn rfc3339(secs: u64) -> String {
    let (y, m, d, hh, mm, ss) = crate::output::civil(secs);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_round_trip_through_rfc3339() {
        let t = parse_amz_date("20261207T101500Z").unwrap();
        assert_eq!(rfc3339(t), "2026-12-07T10:15:00Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(parse_amz_date("20240229T235959Z").unwrap()), "2024-02-29T23:59:59Z");
        let url = "https://h/b/k?X-Amz-Date=20200101T000000Z&X-Amz-Expires=60&X-Amz-Signature=x";
        assert_eq!(presign_expiry(url), Some(("2020-01-01T00:01:00Z".into(), true)));
    }
}
