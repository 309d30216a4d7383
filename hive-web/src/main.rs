//! `hive-web`: parse the flags, read the tokens file, drop privileges and
//! verify that none are left, then (only then) start the runtime, connect to
//! the core and bind the listener.
//!
//! `READY=1` goes to systemd (when `NOTIFY_SOCKET` is set, as under the
//! module's `Type=notify` unit) only once the listener accepts.
//!
//! The tokens file is the one thing read before the drop: it is the
//! gateway's own credential, root-only on disk in `hive-core dev` (under
//! systemd, `LoadCredential=` hands it over the same way), and only its
//! hashes are kept. Nothing else is opened while privileged.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use hive_web::config::{Cli, Config};
use hive_web::core_link::SocketLink;
use hive_web::hub::EventHub;
use hive_web::tokens::TokenSet;
use hive_web::{app, privilege, server, AppState};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal; a supervisor's log gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match cli.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hive-web: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hive-web: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    // The file must be the gateway's own: owned by the uid reading it now,
    // or by the user it is about to become.
    let mut owners = vec![nix::unistd::geteuid().as_raw()];
    if let Some(name) = config.user.as_deref() {
        if let Ok(Some(user)) = nix::unistd::User::from_name(name) {
            owners.push(user.uid.as_raw());
        }
    }
    let tokens = TokenSet::load(&config.tokens_file, &owners)?;
    // Still single-threaded here: credentials are per thread on Linux, so
    // the drop must happen before the runtime starts its workers.
    let dropped = privilege::drop_privileges(config.user.as_deref())?;
    tracing::info!(
        uid = dropped.uid,
        gid = dropped.gid,
        switched = dropped.switched,
        "no capability left, no_new_privs set"
    );
    if config.wildcard_bind {
        tracing::warn!(
            listen = %config.listen,
            "listening on every interface (--allow-wildcard-bind); anyone who can reach this host can reach the login page"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, tokens))
}

async fn serve(config: Config, tokens: TokenSet) -> anyhow::Result<()> {
    let hub = Arc::new(EventHub::new());
    let link = SocketLink::start(&config.core_socket, hub.clone());
    let state = AppState::new(link, hub, tokens, config.access.clone());
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr().context("no local address")?;
    tracing::info!(listen = %local, core_socket = %config.core_socket.display(), "serving");
    // Ready means the listener accepts: the kernel queues connections from
    // here on, before the accept loop below takes the first.
    notify_systemd(sd_notify::NotifyState::Ready).await;
    server::serve(listener, app(state), shutdown_signal())
        .await
        .context("the server failed")
}

/// Sends one state to systemd's `NOTIFY_SOCKET` (nothing without one). The
/// send is a blocking datagram write, so it runs off the async workers; a
/// failure is logged, not fatal (systemd then times the unit out).
async fn notify_systemd(state: sd_notify::NotifyState<'static>) {
    let what = state.to_string();
    match tokio::task::spawn_blocking(move || sd_notify::notify(false, &[state])).await {
        Ok(Ok(())) => tracing::debug!(state = %what, "told systemd"),
        Ok(Err(e)) => tracing::warn!(state = %what, error = %e, "could not notify systemd"),
        Err(e) => tracing::warn!(state = %what, error = %e, "notifying systemd failed"),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the gateway");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
