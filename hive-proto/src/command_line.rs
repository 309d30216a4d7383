//! What `hivectl` and `hive-agent` share about their own command lines: a
//! bad one (a bad agent name, a missing argument) is a failure like any
//! other, one line on stderr and exit code 1, where clap alone would print
//! usage lines and exit 2. `--help`, `--version` and a bare command still
//! print what clap prints.
//!
//! This module must never talk to a socket; it only turns argv into a
//! parsed command or one line of error.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

/// Parses argv for `program`; on a bad command line prints
/// `program: <one line>` and returns exit code 1.
pub fn parse_or_one_line<C: Parser>(program: &str) -> Result<C, ExitCode> {
    C::try_parse().map_err(|e| report(program, e))
}

fn report(program: &str, e: clap::Error) -> ExitCode {
    if !e.use_stderr() || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        e.exit();
    }
    eprintln!("{program}: {}", usage_error(program, &e.to_string()));
    ExitCode::FAILURE
}

/// clap's message for a bad command line on one line: without its `error: `
/// prefix, its usage and its `--help` tip, control characters escaped (an
/// argument is echoed back, and it may hold anything).
pub fn usage_error(program: &str, rendered: &str) -> String {
    let text = rendered.trim_start_matches("error: ");
    let text = text.split("\n\nUsage:").next().unwrap_or(text);
    let text = text
        .split("\n\nFor more information")
        .next()
        .unwrap_or(text);
    let text = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    format!("{} (see {program} --help)", escape_controls(&text))
}

/// Control characters and bidi overrides escaped, so that text from a peer
/// or an argument cannot rewrite the terminal.
pub fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Cmd {
        Status { name: crate::AgentName },
    }

    /// The line `program` prints for `argv`, which clap must refuse.
    fn line_for(program: &str, argv: &[&str]) -> String {
        let e = Cli::try_parse_from(argv).expect_err("refused");
        usage_error(program, &e.to_string())
    }

    #[test]
    fn a_bad_command_line_is_one_line_naming_the_program() {
        for argv in [&["x", "status", "../etc"][..], &["x", "status"][..]] {
            let line = line_for("hivectl", argv);
            assert!(!line.contains('\n') && !line.starts_with("error"), "{line}");
            assert!(!line.contains("Usage"), "{line}");
            assert!(line.ends_with("(see hivectl --help)"), "{line}");
        }
        let line = line_for("hive-agent", &["x", "status", "../etc"]);
        assert!(line.contains("'../etc'"), "{line}");
    }

    #[test]
    fn controls_and_bidi_overrides_are_escaped() {
        assert_eq!(
            escape_controls("a\u{1b}[2Jb\u{202e}"),
            "a\\u{1b}[2Jb\\u{202e}"
        );
    }
}
