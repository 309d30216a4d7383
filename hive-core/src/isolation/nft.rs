//! The installer: runs `nft` to replace `table inet hyperhive` in one
//! transaction (`nft -f -`), reads it back as JSON to verify its shape, and
//! deletes it. Every call is bounded by [`NFT_TIMEOUT`].
//!
//! This module must never touch a table other than the hive's own.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::ruleset::{ChainShape, Ruleset};
use super::{IsolationError, TABLE};

/// Longest one `nft` or `ip` invocation may take before it is killed.
pub const NFT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most output read back from one command.
const MAX_OUTPUT: usize = 16 << 20;

/// Runs `program args…` with `stdin`; its stdout, or an error naming the
/// command and its stderr.
pub(super) async fn run(
    program: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, IsolationError> {
    let describe = || format!("{} {}", program.display(), args.join(" "));
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| IsolationError::Spawn {
            command: describe(),
            source,
        })?;
    let pipe = child.stdin.take();
    let out = async move {
        if let (Some(text), Some(mut pipe)) = (stdin, pipe) {
            // A broken pipe means the child exited early; its status says why.
            let _ = pipe.write_all(text.as_bytes()).await;
        }
        child.wait_with_output().await
    };
    let out = tokio::time::timeout(NFT_TIMEOUT, out)
        .await
        .map_err(|_| IsolationError::Command {
            command: describe(),
            message: format!("no answer within {}s", NFT_TIMEOUT.as_secs()),
        })?
        .map_err(|source| IsolationError::Spawn {
            command: describe(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        return Err(IsolationError::Command {
            command: describe(),
            message: format!("{} ({first})", out.status),
        });
    }
    let mut stdout = out.stdout;
    stdout.truncate(MAX_OUTPUT);
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// `nft` as the hive uses it.
#[derive(Clone, Debug)]
pub struct Nft {
    pub program: PathBuf,
}

impl Default for Nft {
    fn default() -> Self {
        Self {
            program: PathBuf::from("nft"),
        }
    }
}

/// The table as read back: its shape and a fingerprint that changes with
/// any edit (handles left out, so an identical re-creation is not an edit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    pub chains: Vec<ChainShape>,
    pub sets: Vec<String>,
    pub fingerprint: String,
}

impl Nft {
    /// Replaces the table with `rules` in one transaction.
    pub async fn install(&self, rules: &Ruleset) -> Result<(), IsolationError> {
        run(&self.program, &["-f", "-"], Some(&rules.text)).await?;
        Ok(())
    }

    /// Reads the table back; `None` when it does not exist.
    pub async fn list(&self) -> Result<Option<Listing>, IsolationError> {
        let ours = format!("table inet {TABLE}");
        let mut attempt = 0;
        loop {
            match run(&self.program, &["-j", "list", "table", "inet", TABLE], None).await {
                Ok(json) => return parse_listing(&json).map(Some),
                Err(e) => {
                    // Absent, or nft failing? Ask for the list of tables,
                    // which works whenever nft does. Present there means it
                    // was (re)created in between: read it again.
                    let tables = run(&self.program, &["list", "tables", "inet"], None).await?;
                    if !tables.lines().any(|l| l.trim() == ours) {
                        return Ok(None);
                    }
                    attempt += 1;
                    if attempt == 3 {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Deletes the table; an absent table is not an error.
    pub async fn remove(&self) -> Result<(), IsolationError> {
        // `add` first makes the delete succeed whether or not it existed,
        // in one transaction.
        let text = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
        run(&self.program, &["-f", "-"], Some(&text)).await?;
        Ok(())
    }
}

/// Compares what was read back with what was rendered: the same chains
/// (names, hooks, rule counts) and sets. The error is one sentence.
pub fn verify(expected: &Ruleset, got: &Listing) -> Result<(), String> {
    if got.sets != expected.sets {
        return Err(format!(
            "its sets are {:?}, not {:?}",
            got.sets, expected.sets
        ));
    }
    if got.chains != expected.chains {
        let show = |c: &[ChainShape]| {
            c.iter()
                .map(|c| format!("{}:{}", c.name, c.rules))
                .collect::<Vec<_>>()
                .join(" ")
        };
        return Err(format!(
            "its chains are [{}], not [{}]",
            show(&got.chains),
            show(&expected.chains)
        ));
    }
    Ok(())
}

/// Decodes `nft -j list table` output. Never panics on odd input.
pub fn parse_listing(json: &str) -> Result<Listing, IsolationError> {
    let bad = |what: &str| IsolationError::Command {
        command: format!("nft -j list table inet {TABLE}"),
        message: format!("unexpected output: {what}"),
    };
    let mut doc: Value = serde_json::from_str(json).map_err(|e| bad(&e.to_string()))?;
    strip_handles(&mut doc);
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no nftables array"))?;
    let mut chains: Vec<ChainShape> = Vec::new();
    let mut sets = Vec::new();
    for item in items {
        if let Some(c) = item.get("chain") {
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            chains.push(ChainShape {
                name: name.to_owned(),
                hook: c.get("hook").and_then(Value::as_str).map(known_hook),
                rules: 0,
            });
        } else if let Some(r) = item.get("rule") {
            let chain = r.get("chain").and_then(Value::as_str).unwrap_or_default();
            if let Some(c) = chains.iter_mut().find(|c| c.name == chain) {
                c.rules += 1;
            } else {
                return Err(bad("a rule before its chain"));
            }
        } else if let Some(s) = item.get("set") {
            sets.push(
                s.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    Ok(Listing {
        chains,
        sets,
        fingerprint: doc.to_string(),
    })
}

fn known_hook(h: &str) -> &'static str {
    match h {
        "input" => "input",
        "forward" => "forward",
        "output" => "output",
        "prerouting" => "prerouting",
        "postrouting" => "postrouting",
        _ => "other",
    }
}

/// Handles are the kernel's numbering, not content; the metainfo block
/// names nft's version, not the table's.
fn strip_handles(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("handle");
            map.remove("metainfo");
            map.values_mut().for_each(strip_handles);
        }
        Value::Array(items) => {
            items.retain(|i| i.get("metainfo").is_none());
            items.iter_mut().for_each(strip_handles);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
      {"table": {"family": "inet", "name": "hyperhive", "handle": 2}},
      {"set": {"family": "inet", "name": "private4", "table": "hyperhive", "type": "ipv4_addr", "handle": 6}},
      {"chain": {"family": "inet", "table": "hyperhive", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}},
      {"rule": {"family": "inet", "table": "hyperhive", "chain": "input", "handle": 7, "expr": [{"drop": null}]}},
      {"chain": {"family": "inet", "table": "hyperhive", "name": "egress", "handle": 3}}]}"#;

    #[test]
    fn a_listing_gives_chains_rule_counts_and_a_handle_free_fingerprint() {
        let l = parse_listing(LISTING).unwrap();
        assert_eq!(l.sets, ["private4"]);
        assert_eq!(
            l.chains,
            [
                ChainShape {
                    name: "input".into(),
                    hook: Some("input"),
                    rules: 1
                },
                ChainShape {
                    name: "egress".into(),
                    hook: None,
                    rules: 0
                }
            ]
        );
        let renumbered = LISTING.replace("\"handle\": 7", "\"handle\": 99");
        assert_eq!(
            parse_listing(&renumbered).unwrap().fingerprint,
            l.fingerprint
        );
        let edited = LISTING.replace("{\"drop\": null}", "{\"accept\": null}");
        assert_ne!(parse_listing(&edited).unwrap().fingerprint, l.fingerprint);
    }

    #[test]
    fn odd_output_is_an_error_not_a_panic() {
        for junk in [
            "",
            "[]",
            "{\"nftables\": 3}",
            "{\"nftables\": [{\"rule\": {\"chain\": \"x\"}}]}",
            "\u{0}",
        ] {
            assert!(parse_listing(junk).is_err(), "{junk:?}");
        }
    }
}
