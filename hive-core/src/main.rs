//! The `hive-core` binary: `run --config FILE` (the daemon), `check-config
//! --config FILE` (parse and validate only, as the NixOS module's tests do
//! with the file the module renders) and `dev` (a whole local hive in one
//! command). Flags are parsed here and handed to
//! [`hive_core::daemon`] and [`hive_core::dev`]; logs go to stderr (or the
//! journal, with `--log journald` in a build with the `journald` feature).
//! Every failure is one line on stderr and a non-zero exit.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use hive_core::config::Config;
use hive_core::daemon::{self, Options};
use hive_core::dev::{self, DevOptions, DevRuntime, DevRuntimeChoice, DEFAULT_AGENTS};
use hive_proto::AgentName;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(name = "hive-core", version, about = "hyperhive's root daemon")]
struct Cli {
    /// Where logs go.
    #[arg(long, value_enum, default_value_t = LogTarget::Stderr, global = true)]
    log: LogTarget,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogTarget {
    Stderr,
    Journald,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon from a config file.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Parse and validate a config file, print one line, touch nothing.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a local hive: the daemon, hive-web and demo agents.
    Dev {
        /// Holds run/ (sockets), lib/ (store) and operator-token.
        #[arg(long)]
        state_dir: PathBuf,
        /// Where hive-web serves the dashboard.
        #[arg(long)]
        listen: SocketAddr,
        /// Comma-separated agent names.
        #[arg(long, value_delimiter = ',', value_parser = parse_agent)]
        agents: Option<Vec<AgentName>>,
        /// Create the sockets but start no agent.
        #[arg(long)]
        no_demo: bool,
        /// Do not start hive-web.
        #[arg(long)]
        no_web: bool,
        /// Where agents run: `nspawn` (root: one systemd-nspawn container
        /// each, behind the hive's nftables table), `process` (children,
        /// sandboxed with bubblewrap), or `auto`: nspawn where it can run
        /// (root, systemd-nspawn installed), process otherwise.
        #[arg(long, value_enum, default_value_t = RuntimeFlag::Auto)]
        runtime: RuntimeFlag,
        /// hive-web binary (default: next to this one).
        #[arg(long)]
        web_bin: Option<PathBuf>,
        /// hive-agent binary (default: next to this one).
        #[arg(long)]
        agent_bin: Option<PathBuf>,
        /// Agents run `hive-agent run -- /bin/sh -c 'CMD ARGS'` (the turn
        /// loop around a real CLI) instead of the scripted demo.
        #[arg(long, value_name = "CMD ARGS", conflicts_with = "no_demo")]
        harness: Option<String>,
        /// Run the agents even where nothing can isolate them (every page
        /// then carries a banner saying so).
        #[arg(long)]
        allow_unsandboxed: bool,
        /// Milliseconds between the reconcile loop's reads of the hive's
        /// nftables table (`[network] reconcile_period_ms`).
        #[arg(long, value_name = "MS")]
        reconcile_period_ms: Option<u64>,
        /// A private-range `ADDR:PORT` that `hivectl doctor` probes from
        /// inside each agent (`[network] doctor_targets`); repeatable.
        #[arg(long, value_name = "ADDR:PORT")]
        doctor_target: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RuntimeFlag {
    Auto,
    Process,
    Nspawn,
}

fn parse_agent(s: &str) -> Result<AgentName, String> {
    AgentName::new(s).map_err(|e| format!("{s:?}: {e}"))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: print them as clap would.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, like every other failure; `--help` has the rest.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("hive-core: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(cli.log) {
        eprintln!("hive-core: {e:#}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hive-core: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain joined, no backtrace.
            eprintln!("hive-core: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd) -> anyhow::Result<()> {
    // Handlers first, so a signal during start-up is not the default death.
    let stop = shutdown_signal().context("installing signal handlers")?;
    match cmd {
        Cmd::Run { config } => {
            let config = Config::load(&config)?;
            daemon::run(config, Options::default(), stop).await?;
        }
        Cmd::CheckConfig { config: path } => {
            // The same load as `run`, and nothing after it.
            let config = Config::load(&path)?;
            println!(
                "hive-core: {}: ok ({} agents, runtime {:?})",
                path.display(),
                config.agents.len(),
                config.runtime
            );
        }
        Cmd::Dev {
            state_dir,
            listen,
            agents,
            no_demo,
            no_web,
            runtime,
            web_bin,
            agent_bin,
            harness,
            allow_unsandboxed,
            reconcile_period_ms,
            doctor_target,
        } => {
            let agents = match agents {
                Some(list) => list,
                None => DEFAULT_AGENTS
                    .iter()
                    .map(|a| AgentName::new(a))
                    .collect::<Result<_, _>>()?,
            };
            let opts = DevOptions {
                state_dir,
                listen,
                agents,
                no_demo,
                no_web,
                runtime: match runtime {
                    RuntimeFlag::Auto => DevRuntimeChoice::Auto,
                    RuntimeFlag::Process => DevRuntimeChoice::Exactly(DevRuntime::Process),
                    RuntimeFlag::Nspawn => DevRuntimeChoice::Exactly(DevRuntime::Nspawn),
                },
                web_bin,
                agent_bin,
                harness,
                allow_unsandboxed,
                reconcile_period_ms,
                doctor_targets: doctor_target,
            };
            dev::run(opts, stop).await?;
        }
    }
    Ok(())
}

/// Resolves at the first SIGINT or SIGTERM.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    })
}

fn init_logging(target: LogTarget) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match target {
        LogTarget::Stderr => tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init()
            .context("installing the logger"),
        #[cfg(feature = "journald")]
        LogTarget::Journald => {
            let layer = tracing_journald::layer().context("connecting to journald")?;
            tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init()
                .context("installing the logger")
        }
        #[cfg(not(feature = "journald"))]
        LogTarget::Journald => {
            anyhow::bail!("this hive-core was built without the `journald` feature")
        }
    }
}
