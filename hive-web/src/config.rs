//! The command line: clap parses [`Cli`] as typed, and [`Cli::validate`]
//! turns it into the [`Config`] the rest of the gateway trusts. This module
//! must never touch the network or a file; it only decides whether the flags
//! make sense (a wildcard bind without its flag, a malformed login).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Where the gateway listens unless told otherwise: loopback only, so a fresh
/// install is reachable from nowhere but the host (DESIGN §1, invariant 9).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Where the core's web socket lives on an installed host (DESIGN §2).
pub const DEFAULT_CORE_SOCKET: &str = "/run/hyperhive/web.sock";

/// Longest `Tailscale-User-Login` value we accept on the allow-list: the
/// core refuses operator logins longer than this (`web.sock`, `MAX_LOGIN`).
pub const TAILSCALE_LOGIN_MAX: usize = 64;

/// The flags as typed.
#[derive(Debug, Parser)]
#[command(
    name = "hive-web",
    version,
    about = "hyperhive's unprivileged gateway: the operator dashboard on one origin"
)]
pub struct Cli {
    /// The core's operator socket for the gateway.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CORE_SOCKET)]
    pub core_socket: PathBuf,

    /// Address to serve HTTP on. A wildcard address needs --allow-wildcard-bind.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: String,

    /// File of operator tokens: one per line, `LOGIN:TOKEN` or `TOKEN`, `#` comments.
    #[arg(long, value_name = "FILE")]
    pub tokens_file: PathBuf,

    /// User to become when started as root (required then).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Tailscale logins accepted from `tailscale serve` on loopback without a token.
    #[arg(long, value_name = "LOGIN,...", value_delimiter = ',')]
    pub trust_tailscale_identity: Vec<String>,

    /// Allow listening on 0.0.0.0 or [::] (logs a warning).
    #[arg(long)]
    pub allow_wildcard_bind: bool,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub core_socket: PathBuf,
    pub listen: SocketAddr,
    pub tokens_file: PathBuf,
    pub user: Option<String>,
    /// Exact `Tailscale-User-Login` values that identify an operator when the
    /// TCP peer is loopback. Empty means the header is never believed.
    pub trusted_tailscale_logins: Vec<String>,
    /// Whether `listen` is a wildcard address (the caller logs a warning).
    pub wildcard_bind: bool,
}

/// Why the flags were refused. Each message is one sentence for the operator.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--listen {0:?} is not an IP address and port such as 127.0.0.1:8080")]
    BadListen(String),
    #[error(
        "--listen {0} is a wildcard address; pass --allow-wildcard-bind to serve on every interface"
    )]
    WildcardNotAllowed(SocketAddr),
    #[error("--trust-tailscale-identity entry {0:?} is empty, too long or contains spaces or control characters")]
    BadTailscaleLogin(String),
    #[error("--user must not be empty")]
    EmptyUser,
}

impl Cli {
    /// Checks the flags and returns the configuration the gateway runs with.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let listen: SocketAddr = self
            .listen
            .parse()
            .map_err(|_| ConfigError::BadListen(self.listen.clone()))?;
        let wildcard_bind = listen.ip().is_unspecified();
        if wildcard_bind && !self.allow_wildcard_bind {
            return Err(ConfigError::WildcardNotAllowed(listen));
        }
        let mut trusted = Vec::new();
        for login in self.trust_tailscale_identity {
            let ok = !login.is_empty()
                && login.len() <= TAILSCALE_LOGIN_MAX
                && !login.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return Err(ConfigError::BadTailscaleLogin(login));
            }
            if !trusted.contains(&login) {
                trusted.push(login);
            }
        }
        if self.user.as_deref() == Some("") {
            return Err(ConfigError::EmptyUser);
        }
        Ok(Config {
            core_socket: self.core_socket,
            listen,
            tokens_file: self.tokens_file,
            user: self.user,
            trusted_tailscale_logins: trusted,
            wildcard_bind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["hive-web", "--tokens-file", "/t"];
        argv.extend_from_slice(args);
        Cli::parse_from(argv).validate()
    }

    #[test]
    fn defaults_to_loopback_8080() {
        let c = cli(&[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(!c.wildcard_bind);
        assert!(c.trusted_tailscale_logins.is_empty());
    }

    #[test]
    fn a_wildcard_bind_needs_its_flag() {
        assert!(matches!(
            cli(&["--listen", "0.0.0.0:8080"]),
            Err(ConfigError::WildcardNotAllowed(_))
        ));
        assert!(matches!(
            cli(&["--listen", "[::]:8080"]),
            Err(ConfigError::WildcardNotAllowed(_))
        ));
        let c = cli(&["--listen", "0.0.0.0:8080", "--allow-wildcard-bind"]).unwrap();
        assert!(c.wildcard_bind);
        // A specific tailnet address is not a wildcard.
        assert!(!cli(&["--listen", "100.64.0.1:80"]).unwrap().wildcard_bind);
    }

    #[test]
    fn tailscale_logins_are_split_and_checked() {
        let c = cli(&["--trust-tailscale-identity", "a@example.com,b@github"]).unwrap();
        assert_eq!(c.trusted_tailscale_logins, ["a@example.com", "b@github"]);
        assert!(matches!(
            cli(&["--trust-tailscale-identity", "a b"]),
            Err(ConfigError::BadTailscaleLogin(_))
        ));
    }

    #[test]
    fn a_bad_listen_address_is_named() {
        assert_eq!(
            cli(&["--listen", "localhost:80"]).unwrap_err(),
            ConfigError::BadListen("localhost:80".into())
        );
    }
}
