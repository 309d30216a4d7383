//! `--file REL=LOCAL` and `-m MSG` for the commands that propose config
//! (`hivectl config propose`, `hive-agent propose-config`,
//! `hive-agent request-spawn`): each REL a [`RelPath`] under the agent's
//! directory in the config repo, each LOCAL a regular file of UTF-8 text
//! read here, within the protocol's limits, before anything is sent.
//!
//! A bad argument or file is one error naming the argument and what is
//! wrong; the core validates again (it trusts nothing a client checked).
//! This module must never talk to a socket or read anything but the files
//! named on the command line.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use hive_proto::agent::{
    MAX_PROPOSAL_BYTES, MAX_PROPOSAL_FILE, MAX_PROPOSAL_FILES, MAX_PROPOSAL_MESSAGE,
};
use hive_proto::RelPath;

/// One `--file REL=LOCAL`.
#[derive(Clone, Debug, PartialEq)]
pub struct FileArg {
    /// Where the file goes, relative to `agents/<name>/`.
    pub rel: RelPath,
    /// The local file whose content it gets.
    pub local: PathBuf,
}

impl FromStr for FileArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some((rel, local)) = s.split_once('=') else {
            return Err("expected REL=LOCAL, e.g. agent.toml=./agent.toml".into());
        };
        let rel = RelPath::new(rel).map_err(|e| format!("REL {rel:?}: {e}"))?;
        if local.is_empty() {
            return Err(format!("no LOCAL file after {rel}="));
        }
        Ok(Self {
            rel,
            local: PathBuf::from(local),
        })
    }
}

/// Reads every `--file` into the map a proposal carries, refusing a
/// repeated REL, a file that is not a regular file of UTF-8 text, one over
/// [`MAX_PROPOSAL_FILE`] bytes, more than [`MAX_PROPOSAL_FILES`] files and
/// more than [`MAX_PROPOSAL_BYTES`] in all.
pub fn read_files(args: &[FileArg]) -> Result<BTreeMap<RelPath, String>> {
    if args.is_empty() {
        bail!("no --file REL=LOCAL given; nothing was proposed");
    }
    if args.len() > MAX_PROPOSAL_FILES {
        bail!(
            "{} files given, a proposal holds at most {MAX_PROPOSAL_FILES}; nothing was proposed",
            args.len()
        );
    }
    let mut files = BTreeMap::new();
    let mut total = 0;
    for arg in args {
        let text = read_one(arg)?;
        total += text.len();
        if files.insert(arg.rel.clone(), text).is_some() {
            bail!("--file {} is given twice; nothing was proposed", arg.rel);
        }
    }
    if total > MAX_PROPOSAL_BYTES {
        bail!(
            "the files hold {total} bytes together, a proposal at most {MAX_PROPOSAL_BYTES}; \
             nothing was proposed"
        );
    }
    Ok(files)
}

/// Refuses a commit message over [`MAX_PROPOSAL_MESSAGE`] bytes.
pub fn check_message(message: &str) -> Result<()> {
    if message.len() > MAX_PROPOSAL_MESSAGE {
        bail!(
            "the message is {} bytes, at most {MAX_PROPOSAL_MESSAGE}; nothing was proposed",
            message.len()
        );
    }
    Ok(())
}

fn read_one(arg: &FileArg) -> Result<String> {
    let what = || format!("--file {}={}", arg.rel, arg.local.display());
    // Checked before opening: opening a FIFO would wait for a writer.
    let meta = std::fs::metadata(&arg.local).with_context(what)?;
    if !meta.is_file() {
        bail!("{}: not a regular file; nothing was proposed", what());
    }
    let file = std::fs::File::open(&arg.local).with_context(what)?;
    let mut bytes = Vec::new();
    file.take(MAX_PROPOSAL_FILE as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(what)?;
    if bytes.len() > MAX_PROPOSAL_FILE {
        bail!(
            "{}: over {MAX_PROPOSAL_FILE} bytes, the most one proposal file may hold; \
             nothing was proposed",
            what()
        );
    }
    String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text; nothing was proposed", what()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(s: &str) -> Result<FileArg, String> {
        s.parse()
    }

    #[test]
    fn a_file_argument_is_a_rel_path_then_a_local_path() {
        let a = arg("agent.toml=./x=y.toml").unwrap();
        assert_eq!(a.rel.as_str(), "agent.toml");
        assert_eq!(a.local, PathBuf::from("./x=y.toml"));
        for bad in [
            "agent.toml",
            "../b/agent.toml=x",
            "/etc/x=y",
            "agent.toml=",
            "=x",
        ] {
            assert!(arg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn files_are_read_within_the_limits_and_refused_past_them() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p.display().to_string()
        };
        let ok = write("ok", b"restart = \"never\"\n");
        let files = read_files(&[arg(&format!("agent.toml={ok}")).unwrap()]).unwrap();
        assert_eq!(
            files[&RelPath::new("agent.toml").unwrap()],
            "restart = \"never\"\n"
        );

        let refused = |args: &[String]| {
            let args: Vec<FileArg> = args.iter().map(|a| arg(a).unwrap()).collect();
            read_files(&args).unwrap_err().to_string()
        };
        let big = write("big", &vec![b'#'; MAX_PROPOSAL_FILE + 1]);
        let e = refused(&[format!("agent.nix={big}")]);
        assert!(e.contains("over 65536 bytes"), "{e}");
        let bin = write("bin", &[0xff, 0xfe]);
        assert!(refused(&[format!("agent.nix={bin}")]).contains("not UTF-8"));
        let e = refused(&[format!("agent.toml={ok}"), format!("agent.toml={ok}")]);
        assert!(e.contains("given twice"), "{e}");
        let dirpath = dir.path().display().to_string();
        assert!(refused(&[format!("agent.toml={dirpath}")]).contains("not a regular file"));
        let e = refused(&[format!("agent.toml={dirpath}/missing")]);
        assert!(e.contains("missing"), "{e}");
        let many: Vec<String> = (0..=MAX_PROPOSAL_FILES)
            .map(|i| format!("f{i}={ok}"))
            .collect();
        assert!(refused(&many).contains("at most 16"));
        let near = write("near", &vec![b'#'; MAX_PROPOSAL_FILE]);
        let e = refused(&[format!("a={near}"), format!("b={near}")]);
        assert!(e.contains("together"), "{e}");
        assert!(read_files(&[]).is_err());
    }

    #[test]
    fn a_long_message_is_refused() {
        assert!(check_message("fine").is_ok());
        assert!(check_message(&"m".repeat(MAX_PROPOSAL_MESSAGE + 1)).is_err());
    }
}
