//! `shoal token create | ls | revoke`.

use std::path::Path;

use anyhow::Result;

use super::TokenCommand;
use shoal_node::output;

/// `shoal token create | ls | revoke`: the token list in the home (no store is opened, so this
/// works while the node runs; it re-reads the list at its next request).
pub(super) fn token_command(home: &Path, cmd: TokenCommand) -> Result<()> {
    use shoal_node::tokens;
    let when = |ms: Option<u64>| ms.map(output::unix_ms_utc).unwrap_or_else(|| "-".into());
    match cmd {
        TokenCommand::Create { name, scope, expires, json } => {
            let expires = expires.as_deref().map(tokens::parse_duration).transpose()?;
            let (t, secret) = tokens::create(home, &name, scope, expires)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"name": t.name, "scope": t.scope, "secret": secret,
                        "created_unix_ms": t.created_unix_ms, "expires_unix_ms": t.expires_unix_ms})
                );
            } else {
                println!("{secret}");
                eprintln!(
                    "token `{}` ({}, expires {}): the secret above is shown only now; keep it in a file only you \
                     can read and pass --token-file FILE, or set SHOAL_TOKEN",
                    t.name,
                    t.scope,
                    t.expires_unix_ms.map(output::unix_ms_utc).unwrap_or_else(|| "never".into())
                );
            }
        }
        TokenCommand::Ls { json } => {
            let list = tokens::load(home)?;
            let used = tokens::load_used(home);
            if json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|t| {
                        serde_json::json!({"name": t.name, "scope": t.scope, "created_unix_ms": t.created_unix_ms,
                            "expires_unix_ms": t.expires_unix_ms, "last_used_unix_ms": used.get(&t.name)})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let mut table = comfy_table::Table::new();
                table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
                table.set_header(["name", "scope", "created", "expires", "last used"]);
                let now = shoal_node::clock::now_unix_ms();
                for t in &list {
                    let expires = match t.expires_unix_ms {
                        Some(e) if e <= now => format!("{} (expired)", output::unix_ms_utc(e)),
                        e => when(e),
                    };
                    table.add_row([
                        t.name.clone(),
                        t.scope.to_string(),
                        output::unix_ms_utc(t.created_unix_ms),
                        expires,
                        when(used.get(&t.name).copied()),
                    ]);
                }
                println!("{table}");
            }
        }
        TokenCommand::Revoke { name } => {
            tokens::revoke(home, &name)?;
            eprintln!("revoked `{name}`; a node using this home refuses it from its next request");
        }
    }
    Ok(())
}
