//! Who may use the HTTP API, decided before any handler runs (one middleware, [`check`]):
//! 1. `Host`, and `Origin` when present, must name this node: its bound address, `localhost`, or a
//!    name the operator added (`--http-host`). A page of another site can make the browser send
//!    requests here (a form, `fetch` with `no-cors`, an address rebound by DNS to 127.0.0.1); it
//!    cannot choose `Origin`, and after a rebinding `Host` is its own name.
//! 2. A body must be of the type its route reads (JSON, multipart, bytes): the types a page may
//!    send elsewhere without the browser asking first (`text/plain`, form-urlencoded) never are.
//! 3. With authentication on (a non-loopback address, `--http-auth` or `--explorer-public`), a
//!    bearer token whose scope covers the route ([`access`]); anonymous callers get the explorer
//!    when it is public and nothing else. Without it (loopback, the default) every caller is the
//!    local user.
//!
//! The handlers learn who called from the [`Caller`] the middleware puts in the request.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::tokens::{self, Scope, StoredToken};

/// How often the node writes when tokens were last used, in ms.
pub(crate) const USED_FLUSH_MS: u64 = 2_000;

/// Who made a request, as the middleware found.
#[derive(Clone, Debug)]
pub(crate) enum Caller {
    /// Authentication is off (a loopback node without `--http-auth`): the local user.
    Local,
    /// A valid token (its name, never its secret, may be logged).
    #[expect(dead_code, reason = "handlers so far only tell anonymous callers apart")]
    Token { name: String, scope: Scope },
    /// No token, on a route open to anyone (the page, a public explorer).
    Anonymous { client: ClientKey },
}

/// Whom per-client limits count against: an IPv4 address, or the /64 prefix of an IPv6 one (one
/// host usually holds a whole /64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ClientKey(pub IpAddr);

impl ClientKey {
    pub fn of(addr: IpAddr) -> ClientKey {
        match addr {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    ClientKey(IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)))
                }
            },
        }
    }
}

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone: the page and its assets, health, the OpenAPI document.
    Public,
    /// The explorer's routes: anyone when the explorer is public, else this scope.
    Explorer(Scope),
    /// A token of at least this scope.
    Needs(Scope),
}

/// The access rule of each route (the OpenAPI document states the same as `x-shoal-scope`).
/// Routes not named here need `read` to read and `admin` for anything else.
pub(crate) fn access(method: &Method, path: &str) -> Access {
    let read = method == Method::GET || method == Method::HEAD;
    if read
        && (matches!(
            path,
            "/" | "/explore" | "/explorer/app.js" | "/explorer/app.css" | "/v1/health" | "/v1/openapi.json"
        ) || path.starts_with("/r/"))
    {
        return Access::Public;
    }
    if read && (path == "/v1/explorer/catalogue" || path.starts_with("/v1/explorer/")) {
        return Access::Explorer(Scope::Read);
    }
    if read {
        return Access::Needs(Scope::Read);
    }
    if method == Method::POST {
        if path == "/v1/explorer/runs" {
            return Access::Explorer(Scope::Submit);
        }
        if path == "/v1/dags" || path == "/v1/blobs" || (path.starts_with("/v1/dags/") && path.ends_with("/cancel")) {
            return Access::Needs(Scope::Submit);
        }
    }
    Access::Needs(Scope::Admin)
}

/// The media types a route's body may have; empty: the route reads no body.
fn body_types(path: &str) -> &'static [&'static str] {
    match path {
        "/v1/dags" | "/v1/test/block" => &["application/json"],
        "/v1/blobs" => &["application/octet-stream"],
        "/v1/explorer/runs" => &["multipart/form-data"],
        p if p.starts_with("/v1/dags/") && (p.ends_with("/cancel") || p.ends_with("/verify")) => &[],
        // Routes added later: a type a page elsewhere cannot send without a preflight, or bytes.
        _ => &["application/json", "multipart/form-data", "application/octet-stream"],
    }
}

/// The names this node answers to.
#[derive(Clone, Debug)]
pub struct Hosts {
    /// The address the API is bound to (its port the real one, not 0).
    pub bound: SocketAddr,
    /// `--http-host` names, lower-case, each with the one port it may come with (any when None).
    pub names: Vec<(String, Option<u16>)>,
}

impl Hosts {
    /// `NAME` or `NAME:PORT`, as `--http-host` takes them.
    pub fn parse_name(text: &str) -> Result<(String, Option<u16>), String> {
        let bad = || format!("--http-host `{text}`: write a host name, optionally with a port (shoal.example.org:443)");
        let (host, port) = split_authority(text).ok_or_else(bad)?;
        if host.is_empty() {
            return Err(bad());
        }
        Ok((host, port))
    }

    /// Whether `host` (lower-case, no brackets) with `port` (or `default_port`) names this node.
    fn allows(&self, host: &str, port: Option<u16>, default_port: u16) -> bool {
        let port = port.unwrap_or(default_port);
        let host = host.trim_end_matches('.');
        if self.names.iter().any(|(n, p)| n == host && p.is_none_or(|p| p == port)) {
            return true;
        }
        if port != self.bound.port() {
            return false;
        }
        let ip = self.bound.ip();
        match host.parse::<IpAddr>() {
            // An address cannot be rebound: any of this host's reaches us when bound to all of them.
            Ok(given) => given == ip || ip.is_unspecified() || (ip.is_loopback() && given.is_loopback()),
            Err(_) => host == "localhost" && (ip.is_loopback() || ip.is_unspecified()),
        }
    }

    fn allows_host_header(&self, value: &str) -> bool {
        split_authority(value).is_some_and(|(h, p)| self.allows(&h, p, 80))
    }

    /// `scheme://host[:port]`, nothing after it.
    fn allows_origin(&self, origin: &str) -> bool {
        let Some((scheme, rest)) = origin.split_once("://") else { return false };
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "http" => 80,
            "https" => 443,
            _ => return false,
        };
        !rest.contains('/') && split_authority(rest).is_some_and(|(h, p)| self.allows(&h, p, default_port))
    }

    /// What to tell a refused caller the node does answer to.
    fn describe(&self) -> String {
        let mut names = vec![self.bound.to_string()];
        if self.bound.ip().is_loopback() || self.bound.ip().is_unspecified() {
            names.push(format!("localhost:{}", self.bound.port()));
        }
        for (n, p) in &self.names {
            names.push(match p {
                Some(p) => format!("{n}:{p}"),
                None => n.clone(),
            });
        }
        names.join(", ")
    }
}

/// `host[:port]` or `[v6][:port]` → (lower-case host without brackets, port).
fn split_authority(text: &str) -> Option<(String, Option<u16>)> {
    let text = text.trim();
    if text.is_empty() || text.contains(['/', '@', ' ']) {
        return None;
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        h.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':')?)),
        }
    } else {
        match text.split_once(':') {
            Some((_, p)) if p.contains(':') => return None,
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// Everything the middleware decides with.
pub(crate) struct Guard {
    pub hosts: Hosts,
    /// Some: authentication is on.
    pub tokens: Option<Arc<TokenCheck>>,
    /// Anonymous callers may use the explorer (page, catalogue, runs of catalogue entries, views).
    pub explorer_public: bool,
}

/// The token list as the node checks it: re-read when `tokens.json` changes.
pub(crate) struct TokenCheck {
    home: PathBuf,
    cached: Mutex<Cached>,
    /// Tokens used since the last write of `tokens-used.json`: name → Unix ms.
    used: Mutex<BTreeMap<String, u64>>,
}

/// What identifies a version of the token file: inode, mtime (s, ns), ctime (ns), size.
type Stamp = (u64, i64, i64, i64, u64);

struct Cached {
    /// What the file looked like when last read (outer None: never read; inner None: absent).
    stamp: Option<Option<Stamp>>,
    tokens: Result<Arc<Vec<(StoredToken, blake3::Hash)>>, String>,
}

/// Why a token was refused.
enum Refused {
    Unknown,
    Expired {
        name: String,
    },
    /// The list cannot be read: every token is refused until it is fixed.
    List(String),
}

impl TokenCheck {
    pub fn new(home: &Path) -> TokenCheck {
        TokenCheck {
            home: home.to_path_buf(),
            cached: Mutex::new(Cached { stamp: None, tokens: Ok(Arc::default()) }),
            used: Mutex::new(BTreeMap::new()),
        }
    }

    fn stamp(&self) -> Option<Stamp> {
        std::fs::metadata(tokens::tokens_path(&self.home))
            .ok()
            .map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.ctime_nsec(), m.size()))
    }

    /// The current list (one `stat` per request; read again when the file changed).
    fn tokens(&self) -> Result<Arc<Vec<(StoredToken, blake3::Hash)>>, String> {
        let stamp = self.stamp();
        let mut c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if c.stamp != Some(stamp) {
            c.tokens = tokens::load(&self.home)
                .map(|list| Arc::new(list.into_iter().filter_map(|t| t.hash().map(|h| (t, h))).collect()))
                .map_err(|e| {
                    tracing::warn!("every API token is refused until the token list is fixed: {e:#}");
                    format!("{e:#}")
                });
            c.stamp = Some(stamp);
        }
        c.tokens.clone()
    }

    /// How many tokens the list holds now.
    pub fn count(&self) -> Result<usize, String> {
        self.tokens().map(|t| t.len())
    }

    fn check(&self, secret: &str, now_ms: u64) -> Result<(String, Scope), Refused> {
        let list = self.tokens().map_err(Refused::List)?;
        let presented = tokens::hash_secret(secret);
        // Every entry is compared (blake3::Hash compares in constant time), so the time taken says
        // nothing about which token, if any, came close.
        let mut found = None;
        for (t, h) in list.iter() {
            if *h == presented {
                found = Some(t);
            }
        }
        let t = found.ok_or(Refused::Unknown)?;
        if t.expires_unix_ms.is_some_and(|e| e <= now_ms) {
            return Err(Refused::Expired { name: t.name.clone() });
        }
        self.used.lock().unwrap_or_else(|e| e.into_inner()).insert(t.name.clone(), now_ms);
        Ok((t.name.clone(), t.scope))
    }

    /// Writes the last-used times gathered since the last call, if any.
    pub fn flush_used(&self) {
        let used = std::mem::take(&mut *self.used.lock().unwrap_or_else(|e| e.into_inner()));
        if !used.is_empty()
            && let Err(e) = tokens::save_used(&self.home, &used)
        {
            tracing::warn!("cannot record when tokens were last used: {e:#}");
        }
    }
}

/// The API's one error body (`api_error`), before any handler.
fn refuse(status: StatusCode, msg: String) -> Response {
    crate::api_error::ApiError::new(status, msg).into_response()
}

fn challenge(status: StatusCode, www: String, msg: String) -> Response {
    let mut r = refuse(status, msg);
    if let Ok(v) = HeaderValue::from_str(&www) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

const HOW_TO_GET_A_TOKEN: &str = "send `Authorization: Bearer TOKEN` (the CLI: set SHOAL_TOKEN or pass --token-file \
     PATH); the node's operator makes tokens with `shoal token create --name NAME --scope read|submit|admin`";

/// The middleware: Host and Origin, the body's type, then the caller's token.
pub(crate) async fn check(State(g): State<Arc<Guard>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    match &host {
        Some(h) if g.hosts.allows_host_header(h) => {}
        Some(h) => {
            return refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "Host `{h}` is not this node's (it answers to {}): a web page may reach this node through a \
                     name rebound to its address; if this is a name of the node, start it with --http-host NAME",
                    g.hosts.describe()
                ),
            );
        }
        None => return refuse(StatusCode::FORBIDDEN, "the request names no Host; send `Host: ADDRESS:PORT`".into()),
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
        if !g.hosts.allows_origin(&origin) {
            return refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "Origin `{origin}` is not this node's (it answers to {}): pages of other sites may not use \
                     this API; call it from a program (which sends no Origin) or from the node's own page",
                    g.hosts.describe()
                ),
            );
        }
    }
    if method != Method::GET && method != Method::HEAD && method != Method::OPTIONS {
        let types = body_types(&path);
        let given = req.headers().get(header::CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let media = given.as_deref().map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        let length = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let has_body = length.is_some_and(|n| n > 0) || req.headers().contains_key(header::TRANSFER_ENCODING);
        let fine = match &media {
            Some(m) => types.contains(&m.as_str()) || (types.is_empty() && !has_body),
            None => !has_body,
        };
        if !fine {
            let msg = if types.is_empty() {
                format!("{method} {path} takes no body; send none")
            } else {
                format!(
                    "{method} {path} takes a body of type {} (it was {}); set Content-Type",
                    types.join(" or "),
                    given.as_deref().map(|g| format!("`{g}`")).unwrap_or_else(|| "untyped".into())
                )
            };
            return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, msg);
        }
    }
    let client = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| ClientKey::of(c.0.ip()));
    let client = client.unwrap_or(ClientKey(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)));
    let caller = match &g.tokens {
        None => Caller::Local,
        Some(tc) => {
            let need = access(&method, &path);
            let anonymous_ok = match need {
                Access::Public => true,
                Access::Explorer(_) => g.explorer_public,
                Access::Needs(_) => false,
            };
            match req.headers().get(header::AUTHORIZATION) {
                None if anonymous_ok => Caller::Anonymous { client },
                None => {
                    return challenge(
                        StatusCode::UNAUTHORIZED,
                        "Bearer realm=\"shoal\"".into(),
                        format!("{method} {path} needs a token: {HOW_TO_GET_A_TOKEN}"),
                    );
                }
                Some(value) => {
                    let invalid = |msg: String| {
                        challenge(
                            StatusCode::UNAUTHORIZED,
                            "Bearer realm=\"shoal\", error=\"invalid_token\"".into(),
                            msg,
                        )
                    };
                    let text = value.to_str().unwrap_or("");
                    let Some(secret) = text
                        .split_once(' ')
                        .filter(|(kind, _)| kind.eq_ignore_ascii_case("bearer"))
                        .map(|(_, s)| s.trim())
                    else {
                        return invalid(format!(
                            "the Authorization header is not `Bearer TOKEN`: {HOW_TO_GET_A_TOKEN}"
                        ));
                    };
                    let (name, scope) = match tc.check(secret, crate::clock::now_unix_ms()) {
                        Ok(found) => found,
                        Err(Refused::Unknown) => {
                            return invalid(
                                "the token is not one this node knows: mistyped, revoked, or made for another node's \
                                 home; ask its operator for one (`shoal token create`)"
                                    .into(),
                            );
                        }
                        Err(Refused::Expired { name }) => {
                            return invalid(format!(
                                "the token `{name}` has expired; ask the node's operator for a new one"
                            ));
                        }
                        Err(Refused::List(e)) => {
                            return invalid(format!("the node cannot read its token list ({e}); tell its operator"));
                        }
                    };
                    let needed = match need {
                        Access::Public => None,
                        Access::Explorer(s) | Access::Needs(s) => Some(s),
                    };
                    if let Some(needed) = needed.filter(|n| scope < *n) {
                        return challenge(
                            StatusCode::FORBIDDEN,
                            format!("Bearer realm=\"shoal\", error=\"insufficient_scope\", scope=\"{needed}\""),
                            format!(
                                "the token `{name}` has scope {scope}; {method} {path} needs {needed} (a new token: \
                                 `shoal token create --scope {needed}`)"
                            ),
                        );
                    }
                    Caller::Token { name, scope }
                }
            }
        }
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(bound: &str, names: &[&str]) -> Hosts {
        Hosts { bound: bound.parse().unwrap(), names: names.iter().map(|n| Hosts::parse_name(n).unwrap()).collect() }
    }

    #[test]
    fn host_headers() {
        let check = |h: &Hosts, value: &str, want: bool| assert_eq!(h.allows_host_header(value), want, "{value}");
        let lo = hosts("127.0.0.1:7170", &["shoal.example.org", "proxy.example:8443"]);
        for ok in ["127.0.0.1:7170", "localhost:7170", "LOCALHOST:7170", "localhost.:7170", "[::1]:7170"] {
            check(&lo, ok, true);
        }
        for ok in ["shoal.example.org", "shoal.example.org:443", "proxy.example:8443"] {
            check(&lo, ok, true);
        }
        for no in [
            "evil.example:7170",
            "127.0.0.1:7171",
            "127.0.0.1",
            "localhost",
            "proxy.example:443",
            "10.0.0.5:7170",
            "127.0.0.1:7170@evil",
            "user@127.0.0.1:7170",
            "",
            "[::1",
            "::1:7170",
        ] {
            check(&lo, no, false);
        }
        let all = hosts("0.0.0.0:7170", &[]);
        check(&all, "10.0.0.5:7170", true);
        check(&all, "localhost:7170", true);
        check(&all, "evil.example:7170", false);
        let one = hosts("10.0.0.5:7170", &[]);
        check(&one, "10.0.0.5:7170", true);
        check(&one, "localhost:7170", false);
        check(&one, "10.0.0.6:7170", false);
    }

    #[test]
    fn origins() {
        let h = hosts("127.0.0.1:7170", &["shoal.example.org"]);
        for ok in
            ["http://127.0.0.1:7170", "http://localhost:7170", "https://shoal.example.org", "HTTP://localhost:7170"]
        {
            assert!(h.allows_origin(ok), "{ok}");
        }
        for no in [
            "null",
            "http://evil.example",
            "http://127.0.0.1:7171",
            "http://127.0.0.1",
            "file://",
            "ftp://127.0.0.1:7170",
            "http://127.0.0.1:7170/path",
            "http://evil.example@127.0.0.1:7170",
        ] {
            assert!(!h.allows_origin(no), "{no}");
        }
    }

    /// The OpenAPI document states, for every route, the rule [`access`] applies.
    #[test]
    fn the_openapi_document_states_each_routes_scope() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
        let mut checked = 0;
        for (path, ops) in doc["paths"].as_object().unwrap() {
            // A template's placeholders stand for any value.
            let concrete = path.replace(['{', '}'], "");
            for (method, op) in ops.as_object().unwrap() {
                let m: Method = method.to_uppercase().parse().unwrap();
                let (scope, anonymous) = match access(&m, &concrete) {
                    Access::Public => ("public", false),
                    Access::Explorer(s) => (s.as_str(), true),
                    Access::Needs(s) => (s.as_str(), false),
                };
                assert_eq!(op["x-shoal-scope"], scope, "{method} {path}");
                assert_eq!(op["x-shoal-anonymous"].as_bool().unwrap_or(false), anonymous, "{method} {path}");
                checked += 1;
            }
        }
        assert!(checked >= 18, "{checked}");
    }

    #[test]
    fn every_route_has_a_rule() {
        let check = |m: Method, p: &str, want: Access| assert_eq!(access(&m, p), want, "{m} {p}");
        check(Method::GET, "/", Access::Public);
        check(Method::GET, "/r/abc", Access::Public);
        check(Method::GET, "/v1/health", Access::Public);
        check(Method::GET, "/v1/explorer/catalogue", Access::Explorer(Scope::Read));
        check(Method::GET, "/v1/explorer/files/ab/x.txt", Access::Explorer(Scope::Read));
        check(Method::POST, "/v1/explorer/runs", Access::Explorer(Scope::Submit));
        check(Method::GET, "/v1/dags", Access::Needs(Scope::Read));
        check(Method::GET, "/v1/events", Access::Needs(Scope::Read));
        check(Method::GET, "/v1/dags/abc/facts", Access::Needs(Scope::Read));
        check(Method::POST, "/v1/dags", Access::Needs(Scope::Submit));
        check(Method::POST, "/v1/blobs", Access::Needs(Scope::Submit));
        check(Method::POST, "/v1/dags/abc/cancel", Access::Needs(Scope::Submit));
        check(Method::POST, "/v1/test/block", Access::Needs(Scope::Admin));
        check(Method::DELETE, "/v1/dags", Access::Needs(Scope::Admin));
        check(Method::POST, "/v1/anything-new", Access::Needs(Scope::Admin));
    }
}
