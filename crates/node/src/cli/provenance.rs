//! `shoal rerun`: a provenance commit run again, here or through a mesh.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use shoal_blobs::Durability;
use shoal_node::provenance::{Repo, rerun, split_repo_rev};
use shoal_node::run::RunOptions;

use super::{EXIT_JOB_FAILED, RerunArgs};

pub(super) async fn rerun_command(home: &Option<PathBuf>, args: RerunArgs) -> Result<ExitCode> {
    let (path, rev) = split_repo_rev(&args.what);
    let committed = tokio::task::block_in_place(|| Repo::open_existing(&path)?.read_run(rev.as_deref()))?;
    let text = rerun::rerun_dag_text(&committed)?;
    let dag = rerun::parse(&committed, &text)?;
    let store = super::open_store(home).await?;
    let opts = RunOptions {
        backend: args.backend.choice(),
        json: args.json,
        use_cache: !args.no_cache,
        cores: args.cores,
        warm_vms: 1,
        records: if args.join.is_empty() { Durability::Soon } else { Durability::Now },
        dag_bytes_max: shoal_node::daemon::DAG_BYTES_MAX_DEFAULT,
        test_flip_outputs: false,
        transfers: shoal_node::data::TransferLimits::default(),
    };
    eprintln!(
        "rerunning commit {} of {} ({} jobs{})",
        &committed.id[..12],
        path.display(),
        dag.jobs.len(),
        if args.no_cache { ", no cache" } else { "" }
    );
    let (records, failed) = if args.join.is_empty() {
        let result = rerun::run_local(&store, dag, &opts).await;
        store.shutdown().await;
        result?
    } else {
        let tmp = tempfile::tempdir()?;
        let file = tmp.path().join(format!("rerun-{}.json", &committed.id[..12]));
        std::fs::write(&file, &text)?;
        let json = args.json;
        super::node::with_embedded_node(store, &args.join, args.mesh_key.clone(), opts, move |client| {
            let (_, hash) = shoal_node::client::submit_and_wait(client, &file, None, json)?;
            let facts = shoal_node::provenance::node::facts(client, &hash, None, Some(text))?;
            let mut records = std::collections::BTreeMap::new();
            for (job, signed) in facts.records {
                records.insert(job, signed.record_trusted()?);
            }
            let failed = facts
                .jobs
                .into_iter()
                .filter(|j| j.status != shoal_node::run::Status::Done)
                .map(|j| (j.job, j.error.unwrap_or_else(|| "failed".into())))
                .collect();
            Ok((records, failed))
        })
        .await?
    };
    let compared = rerun::compare(&committed, &records, failed);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&compared)?);
    } else {
        print!("{}", compared.render());
    }
    for w in &compared.warnings {
        eprintln!("warning: {w}");
    }
    Ok(if compared.matched { ExitCode::SUCCESS } else { ExitCode::from(EXIT_JOB_FAILED) })
}

/// `shoal provenance export /r/<record>` with no node named and none holding the store: the
/// record from this store.
pub(super) async fn export_local_record(
    home: &Option<PathBuf>,
    what: &str,
    repo: &std::path::Path,
    push: bool,
) -> Result<()> {
    let hash = shoal_node::provenance::node::parse_record_ref(what)?;
    let store = super::open_store(home).await?;
    let signed = store.get_record(hash).await;
    store.shutdown().await;
    let signed = signed?.ok_or_else(|| {
        anyhow::anyhow!("run record {hash} is not in this store: name the node that has it (`--node URL`)")
    })?;
    signed.verify().map_err(|e| anyhow::anyhow!("run record {hash}: {e}"))?;
    let facts = shoal_node::provenance::node::facts_of_record(signed, shoal_node::provenance::node::permalink(hash))?;
    tokio::task::block_in_place(|| {
        let repo = Repo::open(repo)?;
        shoal_node::provenance::commit_run(&repo, &facts, push).map(drop)
    })
}
