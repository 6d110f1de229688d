//! The commands that talk to a node over its HTTP API: submit, status, watch, cancel, verify, peers.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use shoal_node::api::{Cancelled, DagList, DagStatus, Verified};

use super::{Command, EXIT_JOB_FAILED, NodeArg};

pub(super) fn client_command(home: &Path, command: Command) -> Result<ExitCode> {
    use shoal_node::client::{self, Client};
    let connect = |arg: NodeArg| -> Result<Client> {
        let token = shoal_node::tokens::client_secret(arg.token_file.as_deref())?;
        Ok(Client::new(client::node_url(arg.url, home)?, token))
    };
    match command {
        Command::Submit { dag, node, wait, max_attempts, json, provenance } => {
            let c = connect(node)?;
            let Some(target) = provenance.target() else {
                let ok = client::submit(&c, &dag, max_attempts, wait, json)?;
                return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_JOB_FAILED) });
            };
            if !wait {
                anyhow::bail!(
                    "--provenance commits the run when the DAG ends, so it needs --wait; for a DAG left to run, \
                     `shoal provenance export DAG --repo REPO` commits it later"
                );
            }
            let repo = shoal_node::provenance::Repo::open(&target.repo)?;
            repo.check_ready()?;
            let (ok, hash) = client::submit_and_wait(&c, &dag, max_attempts, json)?;
            shoal_node::provenance::node::commit_submitted(&c, &repo, &dag, &hash, "shoal submit", target.push)?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_JOB_FAILED) })
        }
        Command::Provenance(super::ProvenanceCommand::Export { what, repo, push, node }) => {
            let c = connect(node)?;
            let repo = shoal_node::provenance::Repo::open(&repo)?;
            repo.check_ready()?;
            let mut facts = match what.strip_prefix("/r/") {
                Some(record) => shoal_node::provenance::node::record_facts(&c, record)?,
                None => shoal_node::provenance::node::facts(&c, &what, None, None)?,
            };
            facts.command = "shoal provenance export";
            shoal_node::provenance::commit_run(&repo, &facts, push)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { dag, node, json } => {
            let c = connect(node)?;
            // JSON goes out as a `Value`: its keys sorted, as this command always printed them.
            match &dag {
                Some(d) => {
                    let status: DagStatus = c.get_json(&format!("/v1/dags/{d}"))?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&serde_json::to_value(&status)?)?);
                    } else {
                        client::print_status(&status);
                    }
                }
                None => {
                    let list: DagList = c.get_json("/v1/dags")?;
                    println!("{}", serde_json::to_string_pretty(&serde_json::to_value(&list)?)?);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch { dag, node, json } => {
            client::watch(&connect(node)?, dag.as_deref(), json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { dag, node } => {
            let v: Cancelled = connect(node)?.post(&format!("/v1/dags/{dag}/cancel"), "application/json", b"")?;
            println!("{}", serde_json::to_value(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { dag, job, node, json } => {
            let dag = dag.strip_prefix("blake3:").unwrap_or(&dag).to_string();
            let path = match &job {
                Some(j) => format!("/v1/dags/blake3:{dag}/verify?job={}", shoal_node::human::percent_encode(j)),
                None => format!("/v1/dags/blake3:{dag}/verify"),
            };
            let v: Verified = connect(node)?.post(&path, "application/json", b"")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::to_value(&v)?)?);
            } else {
                client::print_verified(&v);
            }
            let differs = v.jobs.iter().any(|j| j.agrees == Some(false));
            Ok(if differs { ExitCode::from(EXIT_JOB_FAILED) } else { ExitCode::SUCCESS })
        }
        Command::Peers { node, json } => {
            client::peers(&connect(node)?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        _ => unreachable!("only client commands come here"),
    }
}
