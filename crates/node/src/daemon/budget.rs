//! The store within its budget (`--store-size-max`): every [`STORE_CHECK_MS`] the node counts its
//! blobs, and when they are over the budget evicts the results of the least recently used
//! records (`shoal_blobs::Store::evict`) except:
//! - the results the mesh counts on this node for ([`kept_results`]): of each completion in the
//!   ledger whose results are still needed (a final output of its DAG, or one a job not yet done
//!   reads), those this node is one of the k holders of (`--replicas`: the runner and the nodes
//!   `shoal_mesh::replicas::output_holders` names, the rule that chose who copies them);
//! - what a running job reads (its image and inputs, `Store::hold`);
//! - results used in the last [`EVICT_MIN_AGE_MS`].
//!
//! A store still over its budget after that stops the node claiming jobs until it is under
//! again (a live stick's RAM store fills, the node keeps serving what it holds); the log says so
//! and what to do.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use shoal_dag::Hash;
use shoal_mesh::ledger::{JobState, NodeId};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{Cmd, Shared};

/// How often the node counts its store's blobs, ms.
pub const STORE_CHECK_MS: u64 = 2_000;
/// Results used more recently than this are not evicted, ms: a job's results between its
/// record and the ledger's knowing of it.
pub const EVICT_MIN_AGE_MS: u64 = 5_000;
/// The share of the store's file system its blobs may take unless `--store-size-max` says, %.
pub const STORE_SHARE_OF_DISK_PERCENT: u64 = 80;

/// `--store-size-max` unless told: [`STORE_SHARE_OF_DISK_PERCENT`] of the file system holding
/// the store (on a live stick, its RAM).
pub fn store_budget_default(home: &std::path::Path) -> u64 {
    rustix::fs::statvfs(home)
        .map(|st| st.f_blocks.saturating_mul(st.f_frsize) / 100 * STORE_SHARE_OF_DISK_PERCENT)
        .unwrap_or(u64::MAX)
}

/// Bytes in use on the file system holding `path` (every file's, the store's among them).
fn fs_used_bytes(path: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_blocks.saturating_sub(st.f_bfree).saturating_mul(st.f_frsize))
}

/// The records whose results this node keeps whatever the budget: see the module doc. `nodes`
/// is the live nodes, this one included; `holders` the k of `--replicas`.
pub(crate) fn kept_results(
    core: &shoal_mesh::core::NodeCore,
    me: NodeId,
    nodes: &[NodeId],
    holders: usize,
    now_ms: u64,
) -> HashSet<Hash> {
    let ledger = core.ledger();
    let mut keep = HashSet::new();
    for dag in ledger.dags() {
        let Some(state) = ledger.dag_state(dag, now_ms) else { continue };
        // Which jobs read each job's outputs; without the DAG's content, every result counts as
        // needed.
        let readers: Option<Vec<Vec<&str>>> = core.dag(dag).map(|d| {
            let mut readers = vec![Vec::new(); d.jobs.len()];
            for (i, deps) in d.all_dependencies().into_iter().enumerate() {
                for dep in deps {
                    readers[dep].push(d.jobs[i].id.as_str());
                }
            }
            readers
        });
        for (job, st) in &state.jobs {
            let JobState::Done { node, record, .. } = st else { continue };
            let needed = match (&readers, core.dag(dag)) {
                (Some(readers), Some(d)) => match d.jobs.iter().position(|j| &j.id == job) {
                    Some(i) => {
                        readers[i].is_empty()
                            || readers[i].iter().any(|r| {
                                matches!(state.jobs.get(*r), Some(JobState::Open { .. } | JobState::Claimed { .. }))
                            })
                    }
                    None => true,
                },
                _ => true,
            };
            if !needed {
                continue;
            }
            if *node == me
                || shoal_mesh::replicas::output_holders(*record, *node, nodes, holders.saturating_sub(1)).contains(&me)
            {
                keep.insert(*record);
            }
        }
    }
    keep
}

/// Keeps the store within `budget_bytes` for as long as the node runs.
pub(crate) async fn keep_within(shared: Arc<Shared>, budget_bytes: u64) {
    info!(budget_bytes, "store budget");
    let mut tick = tokio::time::interval(Duration::from_millis(STORE_CHECK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut full = false;
    loop {
        tick.tick().await;
        // Counting the blobs asks the blob store for each one's size: not every 2 s on a store of
        // a million blobs. The file system's used bytes bound the store's, at one system call.
        if !full && fs_used_bytes(shared.store.home()).is_some_and(|fs| fs <= budget_bytes) {
            continue;
        }
        let used = match shared.store.stored_bytes().await {
            Ok(used) => used,
            Err(e) => {
                warn!("cannot count the store's blobs: {e}");
                continue;
            }
        };
        let over = if used <= budget_bytes {
            false
        } else {
            let (tx, rx) = oneshot::channel();
            if shared.cmds.send(Cmd::KeptResults { reply: tx }).await.is_err() {
                return;
            }
            let Ok(kept) = rx.await else { return };
            match shared.store.evict(budget_bytes, EVICT_MIN_AGE_MS, &|r| kept.contains(&r)).await {
                Ok(report) => {
                    if report.records > 0 {
                        info!(
                            records = report.records,
                            before = report.bytes_before,
                            after = report.bytes_after,
                            budget_bytes,
                            "store over its budget: evicted the results of the least recently used records"
                        );
                    }
                    // Results too young to go now will go at a later check.
                    report.over && report.young == 0
                }
                Err(e) => {
                    warn!("evicting from the store failed: {e}");
                    true
                }
            }
        };
        if over != full {
            full = over;
            if full {
                warn!(
                    budget_bytes,
                    "the store is over its budget and holds only results the mesh counts on this node for, or \
                     that running jobs read: claiming no job until it is under (raise --store-size-max, or add \
                     nodes to share the results)"
                );
            } else {
                info!(budget_bytes, "the store is under its budget again: claiming jobs");
            }
            if shared.cmds.send(Cmd::StoreFull { full }).await.is_err() {
                return;
            }
        }
    }
}
