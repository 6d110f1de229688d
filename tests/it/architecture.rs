//! The dependency rules ARCHITECTURE.md states, checked against Cargo's resolved graph: which
//! workspace crates each crate may build on, and which outside crates must never reach it (the
//! sans-IO crates link no runtime or network, the guest no host side, the simulator none of the
//! node's I/O).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Crates that do I/O of the kinds the pure crates must not: an async runtime, the network, the
/// blob store and its databases, the HTTP server.
const IO: &[&str] = &["tokio", "libp2p", "iroh", "iroh-blobs", "sled", "redb", "axum", "hyper"];

/// (crate, the workspace crates it may depend on, outside crates it must never pull in).
fn rules() -> Vec<(&'static str, &'static [&'static str], Vec<&'static str>)> {
    let with = |extra: &[&'static str]| IO.iter().copied().chain(extra.iter().copied()).collect::<Vec<_>>();
    vec![
        ("shoal-dag", &[], with(&[])),
        ("shoal-mesh", &["shoal-dag"], with(&[])),
        ("shoal-simulations", &["shoal-dag", "shoal-mesh"], with(&[])),
        ("shoal-sandbox", &["shoal-dag"], with(&[])),
        ("shoal-guest-init", &["shoal-sandbox", "shoal-dag"], with(&[])),
        ("shoal-vm", &["shoal-sandbox", "shoal-dag"], vec!["libp2p", "iroh", "iroh-blobs", "sled", "axum"]),
        ("shoal-blobs", &["shoal-dag"], vec!["libp2p", "axum"]),
        ("shoal-node", &["shoal-dag", "shoal-blobs", "shoal-mesh", "shoal-vm", "shoal-sandbox"], vec![]),
    ]
}

/// Each workspace package's name → the names of every package its normal (non-dev) build
/// dependencies reach, transitively, from `cargo metadata`.
fn closures() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let name_of: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    // id → ids of its normal and build dependencies (dev ones are the tests', not the crate's).
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let deps = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].as_str() != Some("dev")))
            .map(|d| d["pkg"].as_str().unwrap())
            .collect();
        edges.insert(node["id"].as_str().unwrap(), deps);
    }
    let mut out = BTreeMap::new();
    for member in meta["workspace_members"].as_array().unwrap() {
        let root = member.as_str().unwrap();
        let (mut seen, mut todo) = (BTreeSet::new(), vec![root]);
        while let Some(id) = todo.pop() {
            for &dep in edges.get(id).into_iter().flatten() {
                if seen.insert(dep) {
                    todo.push(dep);
                }
            }
        }
        out.insert(name_of[root].to_string(), seen.into_iter().map(|id| name_of[id].to_string()).collect());
    }
    out
}

#[test]
fn every_crate_depends_only_on_what_the_architecture_allows() {
    let closures = closures();
    let mut broken = Vec::new();
    for (krate, allowed, forbidden) in rules() {
        let reach = closures.get(krate).unwrap_or_else(|| panic!("{krate} is not a workspace member"));
        for dep in reach.iter().filter(|d| d.starts_with("shoal-") && !allowed.contains(&d.as_str())) {
            broken.push(format!("{krate} depends on {dep}, which ARCHITECTURE.md does not allow it"));
        }
        for dep in forbidden.iter().filter(|d| reach.contains(**d)) {
            broken.push(format!("{krate} pulls in {dep} (`cargo tree -p {krate} -i {dep}` shows how)"));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_rules_catch_a_crate_that_breaks_them() {
    // The check itself: the node reaches tokio and the blob store, so a rule forbidding them fails.
    let closures = closures();
    let node = &closures["shoal-node"];
    assert!(IO.iter().all(|d| node.contains(*d)), "the node reaches every I/O crate: {node:?}");
    assert!(node.contains("shoal-blobs") && !closures["shoal-mesh"].contains("shoal-blobs"));
}
