//! The command line: clap parses [`Cli`] as typed, and [`Cli::validate`]
//! turns it into the [`Config`] the rest of the gateway trusts. This module
//! must never touch the network or a file; it only decides whether the flags
//! make sense (a wildcard bind without its flag, a malformed login).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::auth::{public_host_name, AccessPolicy};

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

    /// The uid `tailscaled` runs as: a Tailscale-User-Login header is believed
    /// only on a connection the kernel says this uid opened.
    #[arg(long, value_name = "UID", default_value_t = DEFAULT_TAILSCALE_UID)]
    pub tailscale_uid: u32,

    /// Host names the gateway is reached by (besides the listen address and
    /// localhost); a request with any other Host gets 421.
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    pub public_host: Vec<String>,

    /// Allow listening on 0.0.0.0 or [::] (logs a warning).
    #[arg(long)]
    pub allow_wildcard_bind: bool,
}

/// The uid `tailscaled` runs as unless `--tailscale-uid` says otherwise.
pub const DEFAULT_TAILSCALE_UID: u32 = 0;

/// Longest `--public-host` name (a DNS name's limit).
pub const PUBLIC_HOST_MAX: usize = 253;

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub core_socket: PathBuf,
    pub listen: SocketAddr,
    pub tokens_file: PathBuf,
    pub user: Option<String>,
    /// Whom the gateway believes and which `Host`s it answers.
    pub access: AccessPolicy,
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
    #[error("--public-host entry {0:?} is not a host name or IP address (no port, no scheme)")]
    BadPublicHost(String),
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
        let mut access = AccessPolicy::for_listen(listen);
        access.trusted_tailscale = trusted;
        access.tailscale_uid = self.tailscale_uid;
        for host in self.public_host {
            let name = public_host_name(&host)
                .filter(|h| h.len() <= PUBLIC_HOST_MAX)
                .ok_or_else(|| ConfigError::BadPublicHost(host.clone()))?;
            if !access.allowed_hosts.contains(&name) {
                access.allowed_hosts.push(name);
            }
        }
        Ok(Config {
            core_socket: self.core_socket,
            listen,
            tokens_file: self.tokens_file,
            user: self.user,
            access,
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
        assert!(c.access.trusted_tailscale.is_empty());
        assert_eq!(c.access.tailscale_uid, 0);
        assert_eq!(c.access.allowed_hosts, ["127.0.0.1", "localhost"]);
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
        assert_eq!(c.access.trusted_tailscale, ["a@example.com", "b@github"]);
        assert!(matches!(
            cli(&["--trust-tailscale-identity", "a b"]),
            Err(ConfigError::BadTailscaleLogin(_))
        ));
    }

    #[test]
    fn public_hosts_join_the_listen_address_and_localhost() {
        let c = cli(&[
            "--public-host",
            "Box.Tail1234.ts.net.,100.64.0.1",
            "--tailscale-uid",
            "990",
        ])
        .unwrap();
        assert_eq!(
            c.access.allowed_hosts,
            [
                "127.0.0.1",
                "localhost",
                "box.tail1234.ts.net",
                "100.64.0.1"
            ]
        );
        assert_eq!(c.access.tailscale_uid, 990);
        for bad in ["https://box", "box:8080", "a b", "", "x/y"] {
            assert!(
                matches!(
                    cli(&["--public-host", bad]),
                    Err(ConfigError::BadPublicHost(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_bad_listen_address_is_named() {
        assert_eq!(
            cli(&["--listen", "localhost:80"]).unwrap_err(),
            ConfigError::BadListen("localhost:80".into())
        );
    }
}
