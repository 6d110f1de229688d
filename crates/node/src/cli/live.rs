//! `shoal live`: the live system's commands (the work is in `shoal_node::live`).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Result;
use shoal_node::live::{config, disks, run};

use super::LiveCommand;

pub(super) fn live_command(cmd: LiveCommand) -> Result<ExitCode> {
    match cmd {
        LiveCommand::DefaultConfig => {
            print!("{}", config::DEFAULT_CONFIG);
        }
        LiveCommand::CheckConfig { path } => {
            let text =
                std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let c = config::parse(&text)
                .map_err(|e| anyhow::anyhow!("{}:{}:{}: {}", path.display(), e.line, e.col, e.message))?;
            let key = match &c.mesh_key {
                config::MeshKey::Missing => "missing (the node will not start without one)".to_string(),
                config::MeshKey::Inline(_) => "set".to_string(),
                config::MeshKey::File(f) => format!("from the file {f} on the SHOAL partition"),
            };
            println!("{}: ok", path.display());
            println!("mesh key: {key}");
            if c.join.is_empty() {
                println!("join: none (peers found on the local network by mDNS)");
            }
            for j in &c.join {
                println!("join: {j}");
            }
            for (k, v) in &c.labels {
                println!("label: {k}={v}");
            }
            println!("backend: {}, cores: {}, memory: {:?}", c.backend.as_str(), c.cores, c.memory);
            println!("store: {:?}, ram_store_max: {:?}, ntp: {}", c.store, c.ram_store_max, c.ntp.join(" "));
            println!("ports: {} (TCP, mesh), {} (UDP, blobs)", c.listen_port, c.blobs_port);
        }
        LiveCommand::Run { root, http, metadata_url } => {
            let mount = root == std::path::Path::new("/");
            let shoal = std::env::current_exe()?;
            run::run(run::LiveOptions { root, mount, http, shoal, metadata_url })?;
        }
        LiveCommand::PrepareDisk { device, wipe, yes } => {
            let req = disks::PrepareDisk { root: std::path::Path::new("/"), device: &device, wipe };
            disks::prepare_store_disk(&req, |description| yes || confirm(&device, description))?;
            println!(
                "{} is now this computer's store (an ext4 partition labelled {}); it is used from the next boot",
                device.display(),
                disks::STORE_LABEL
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks to type the device's name. Without a terminal on stdin nobody can answer: refused.
fn confirm(device: &std::path::Path, description: &str) -> bool {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        eprintln!("{description}; stdin is not a terminal, so nobody can confirm: pass --yes to go ahead");
        return false;
    }
    eprint!("{description}.\nType the device's name ({}) to go ahead: ", device.display());
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if stdin.lock().read_line(&mut answer).is_err() {
        return false;
    }
    let answer = answer.trim();
    answer == device.to_string_lossy() || device.file_name().is_some_and(|n| n.to_string_lossy() == answer)
}
