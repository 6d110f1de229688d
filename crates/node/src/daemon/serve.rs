//! The HTTP API's accept loop: axum's router on hyper, with the limits `axum::serve` lacks.
//!
//! `axum::serve` keeps every connection it accepts for as long as the client wants, and sets no
//! timer, so hyper's header-read timeout is off: 1,500 connections that sent half a request held
//! 1,024 files (the default soft limit) and the node accepted nothing more (`accept error: Too
//! many open files`, its store starved of files too). Here a connection past
//! [`HttpLimits::connections_max`] is answered 503 at once and closed, and a connection that takes
//! longer than [`HttpLimits::header_timeout_ms`] to send a request's headers — an idle keep-alive
//! connection included — is closed. Bodies and responses are not timed: uploads, outputs and the
//! event stream are as long as they are, and each is bounded in size elsewhere.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tracing::{debug, warn};

/// Connections served at once unless the node is told otherwise (`--http-connections-max`).
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// How long a connection may take to send a request's headers, or sit idle between requests,
/// unless told otherwise (`--http-header-timeout-ms`), in ms.
pub const HEADER_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Pause after a failed accept (out of files: the kernel keeps the connection queued), in ms.
const ACCEPT_ERROR_PAUSE_MS: u64 = 50;
/// How long a refused connection is given to send its request and read the 503, in ms.
const REFUSAL_MS: u64 = 1_000;
/// Bytes of a refused connection's request read (and dropped) before the 503 is written, so the
/// client reads the answer rather than a reset.
const REFUSAL_READ_BYTES_MAX: usize = 16 << 10;
/// The open-files limit asked for when the hard limit is unlimited.
const FILES_WANTED_WHEN_UNLIMITED: u64 = 1 << 20;
/// Open files kept for everything but HTTP connections (the store, iroh, libp2p, jobs' pipes).
const FILES_KEPT_FOR_THE_REST: u64 = 1024;

/// Limits of the HTTP API's connections.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Connections served at once; the next ones get 503 with `Retry-After: 1` and are closed.
    pub connections_max: usize,
    /// Longest a connection may take to send a request's headers or stay idle, in ms.
    pub header_timeout_ms: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { connections_max: CONNECTIONS_MAX_DEFAULT, header_timeout_ms: HEADER_TIMEOUT_MS_DEFAULT }
    }
}

/// Raises this process's soft limit of open files to its hard limit (most systems start a
/// process at 1,024 and allow far more) and returns the connections the API may serve: `wanted`,
/// or fewer when the files would not suffice for them and [`FILES_KEPT_FOR_THE_REST`].
pub fn fit_connections_to_files(wanted: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    // An unlimited hard limit still stops at the kernel's `nr_open`: ask for a number.
    let target = limit.maximum.unwrap_or(FILES_WANTED_WHEN_UNLIMITED);
    if limit.current.is_some_and(|soft| soft < target) {
        limit.current = Some(target);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            debug!("cannot raise the open-files limit to {target}: {e}");
        }
    }
    let files = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let fits = usize::try_from(files.saturating_sub(FILES_KEPT_FOR_THE_REST).max(64)).unwrap_or(usize::MAX);
    if fits < wanted {
        warn!(
            files,
            connections = fits,
            "the open-files limit (ulimit -n) leaves room for {fits} HTTP connections, not {wanted}: raise it to \
             serve more"
        );
    }
    wanted.min(fits)
}

/// Serves `app` on `listener` within `limits`, until the task is dropped.
pub async fn serve(listener: TcpListener, app: Router, limits: HttpLimits) {
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let header_timeout = Duration::from_millis(limits.header_timeout_ms);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                debug!("HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream, limits.connections_max));
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                // What `into_make_service_with_connect_info` would add: the explorer counts by address.
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
            builder.http2().timer(TokioTimer::new()).keep_alive_interval(header_timeout);
            if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await {
                debug!(%peer, "HTTP connection ended: {e}");
            }
            drop(slot);
        });
    }
}

/// Answers a connection past the limit with 503 and closes it.
async fn refuse(mut stream: TcpStream, connections_max: usize) {
    let body = format!(
        "{{\"error\":\"this node serves {connections_max} HTTP connections at once and all are in use: retry in a \
         second (--http-connections-max sets the limit)\"}}"
    );
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: \
         {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_millis(REFUSAL_MS), async {
        // Read what the client sent first, up to the end of its headers: closing with unread
        // data would reset the connection and the client would never see the 503.
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while seen.len() < REFUSAL_READ_BYTES_MAX && !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}
