//! A harness for the HTTP handlers' unit tests: the daemon's router and server over a real store
//! and runner, with the test in the loop's place.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use super::{Cmd, Shared, auth, exec};
use crate::api::Metrics;
use crate::client::Client;

type Shr = Arc<Shared>;

/// The daemon's router, served by its own HTTP server on a loopback port, over a real store
/// and runner; the test plays the loop: each [`Cmd`] a handler sends arrives on `cmds`.
pub(crate) struct Api {
    _home: tempfile::TempDir,
    pub url: String,
    pub node: String,
    pub shared: Shr,
    pub cmds: mpsc::Receiver<Cmd>,
}

pub(crate) async fn api() -> Api {
    let home = tempfile::tempdir().unwrap();
    let store = shoal_blobs::Store::open(&home.path().join("home")).await.unwrap();
    let key = crate::identity::load_or_create(store.home()).unwrap();
    let blobs = Arc::new(store.serve_blobs(key.to_bytes(), "127.0.0.1:0".parse().unwrap()).await.unwrap());
    let run = crate::run::RunOptions {
        backend: crate::run::BackendChoice::Namespace,
        json: true,
        use_cache: true,
        cores: Some(1),
        warm_vms: 0,
        records: shoal_blobs::Durability::Now,
        dag_bytes_max: super::DAG_BYTES_MAX_DEFAULT,
        test_flip_outputs: false,
        transfers: Default::default(),
    };
    let runner = crate::run::Runner::new(&store, &run).unwrap();
    let (tx, cmds) = mpsc::channel(8);
    let node = key.verifying_key().to_bytes();
    let shared = Arc::new(Shared {
        store,
        blobs,
        cmds: tx,
        events: broadcast::channel(8).0,
        node,
        complete: exec::Complete::default(),
        runner,
        run,
        explorer: Default::default(),
        upload_bytes_max: 1 << 20,
        dag_bytes_max: super::DAG_BYTES_MAX_DEFAULT,
        local_upload_bytes_max: 1 << 20,
        lost_recheck_ms: shoal_mesh::Settings::default().lost_recheck_ms,
        cache_trust: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bound = listener.local_addr().unwrap();
    let guard =
        Arc::new(auth::Guard { hosts: auth::Hosts { bound, names: vec![] }, tokens: None, explorer_public: false });
    tokio::spawn(super::serve::serve(listener, super::api::router(shared.clone(), false, guard), Default::default()));
    Api { _home: home, url: format!("http://{bound}"), node: hex::encode(node), shared, cmds }
}

/// Runs `ask` with a client of `api` (a blocking one, off the runtime).
pub(crate) fn ask_with<T: Send + 'static>(
    api: &Api,
    ask: impl FnOnce(Client) -> anyhow::Result<T> + Send + 'static,
) -> tokio::task::JoinHandle<anyhow::Result<T>> {
    let client = Client::new(api.url.clone(), None);
    tokio::task::spawn_blocking(move || ask(client))
}

/// The loop's counters with `running` mesh jobs, the others told apart by their values.
pub(crate) fn metrics(running: usize) -> Metrics {
    Metrics {
        connected: 1,
        cpu_sys_ms: 2,
        cpu_user_ms: 3,
        facts: 4,
        compacted_dags: 15,
        ledger_bytes: 16,
        ledger_digest: "d".into(),
        libp2p_bytes_in: 5,
        libp2p_bytes_out: 6,
        node: "ab".into(),
        peers_live: 7,
        prepared_dags: 8,
        running,
        runs_live: 10,
        uptime_ms: 11,
        hole_punches: 12,
        hole_punches_failed: 13,
        relays_reserved: 14,
    }
}
