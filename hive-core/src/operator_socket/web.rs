//! `web.sock`: the operator RPC for the gateway (`hive-web`). Only the
//! gateway's configured uid (or root) may connect; each call carries the
//! login the gateway authenticated, which becomes the operator in the audit
//! log. The request type is [`WebCall`], whose verbs are the dashboard's:
//! an admin-only verb cannot even be expressed here.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use hive_proto::operator::{OperatorResponse, RpcError, WebCall};
use hive_proto::view::ErrorCode;

use super::Endpoint;
use crate::hive::{Hive, OperatorId};
use crate::peer::PeerCred;

/// Longest operator login the gateway may relay, in characters.
pub const MAX_LOGIN: usize = 64;

/// The processes connected to `web.sock` right now, by the pid and uid the
/// kernel reported when each connected: what `hivectl doctor` inspects as
/// "the gateway". Never filled from anything a peer sent.
#[derive(Clone, Debug, Default)]
pub struct GatewayPeers {
    /// pid → (uid, open connections).
    live: Arc<Mutex<BTreeMap<i32, (u32, usize)>>>,
}

impl GatewayPeers {
    /// The connected peers, `(pid, uid)`, by pid.
    pub fn current(&self) -> Vec<(i32, u32)> {
        self.lock()
            .iter()
            .map(|(pid, (uid, _))| (*pid, *uid))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, (u32, usize)>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enter(&self, cred: PeerCred) -> PeerGuard {
        self.lock().entry(cred.pid).or_insert((cred.uid, 0)).1 += 1;
        PeerGuard {
            peers: self.clone(),
            pid: cred.pid,
        }
    }
}

/// Counts one connection in [`GatewayPeers`] until the connection and
/// every call it made have ended.
#[derive(Debug)]
struct PeerGuard {
    peers: GatewayPeers,
    pid: i32,
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        let mut live = self.peers.lock();
        if let Some((_, n)) = live.get_mut(&self.pid) {
            *n -= 1;
            if *n == 0 {
                live.remove(&self.pid);
            }
        }
    }
}

/// A connected gateway: its description, and its place in [`GatewayPeers`].
#[derive(Clone, Debug)]
pub struct WebCaller {
    desc: String,
    _peer: Arc<PeerGuard>,
}

/// The web socket's peer policy.
#[derive(Clone, Debug)]
pub struct WebEndpoint {
    /// The gateway's user name and uid, resolved when the daemon starts;
    /// `None`: only root may connect.
    web_user: Option<(String, u32)>,
    peers: GatewayPeers,
}

impl WebEndpoint {
    pub fn new(web_user: Option<(String, u32)>, peers: GatewayPeers) -> Self {
        Self { web_user, peers }
    }

    fn decide(&self, cred: PeerCred) -> Result<String, String> {
        match &self.web_user {
            _ if cred.uid == 0 => Ok("hive-web (root)".into()),
            Some((name, uid)) if cred.uid == *uid => Ok(format!("hive-web ({name})")),
            Some((name, _)) => Err(format!(
                "uid {} is not the gateway's user {name}; web.sock serves only hive-web",
                cred.uid
            )),
            None => Err(format!(
                "uid {} is not root, and this core has no web_user configured",
                cred.uid
            )),
        }
    }
}

/// Checks the login the gateway relays: non-empty, at most [`MAX_LOGIN`]
/// characters, no control characters (it lands in logs and the audit log).
pub fn validate_login(login: &str) -> Result<(), RpcError> {
    let bad = |why: &str| {
        Err(RpcError::new(
            ErrorCode::BadRequest,
            format!("operator login {why}"),
        ))
    };
    if login.is_empty() {
        return bad("is empty");
    }
    if login.chars().count() > MAX_LOGIN {
        return bad(&format!("is longer than {MAX_LOGIN} characters"));
    }
    if login.chars().any(|c| c.is_control()) {
        return bad("contains a control character");
    }
    Ok(())
}

impl Endpoint for WebEndpoint {
    type Request = WebCall;
    /// A description of the gateway; the operator comes with each call.
    type Caller = WebCaller;
    const SOCKET: &'static str = "web.sock";

    fn admit(&self, cred: PeerCred) -> impl Future<Output = Result<WebCaller, String>> + Send {
        std::future::ready(self.decide(cred).map(|desc| WebCaller {
            desc,
            _peer: Arc::new(self.peers.enter(cred)),
        }))
    }

    fn describe(caller: &WebCaller) -> String {
        caller.desc.clone()
    }

    async fn call(
        hive: Hive,
        _gateway: WebCaller,
        call: WebCall,
    ) -> Result<OperatorResponse, RpcError> {
        validate_login(&call.operator)?;
        let who = OperatorId::Web {
            login: call.operator,
        };
        hive.operator_call(&who, call.req.into())
            .await
            .map_err(RpcError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_are_checked() {
        assert!(validate_login("ops@example.com").is_ok());
        assert!(validate_login("").is_err());
        assert!(validate_login(&"x".repeat(MAX_LOGIN)).is_ok());
        assert!(validate_login(&"x".repeat(MAX_LOGIN + 1)).is_err());
        assert!(validate_login("ops\nforged: line").is_err());
    }

    #[test]
    fn only_the_gateway_uid_or_root_is_admitted() {
        let ep = WebEndpoint::new(Some(("nobody".into(), 65534)), GatewayPeers::default());
        let cred = |uid| PeerCred {
            pid: 1,
            uid,
            gid: uid,
        };
        assert!(ep.decide(cred(0)).is_ok());
        assert!(ep.decide(cred(65534)).is_ok());
        assert!(ep
            .decide(cred(1000))
            .unwrap_err()
            .contains("not the gateway"));
        assert!(WebEndpoint::new(None, GatewayPeers::default())
            .decide(cred(1000))
            .is_err());
    }

    #[tokio::test]
    async fn a_gateway_counts_as_connected_until_its_last_connection_ends() {
        let peers = GatewayPeers::default();
        let ep = WebEndpoint::new(None, peers.clone());
        let cred = |pid| PeerCred {
            pid,
            uid: 0,
            gid: 0,
        };
        let a = ep.admit(cred(7)).await.unwrap();
        let b = ep.admit(cred(7)).await.unwrap();
        let call_copy = a.clone();
        assert_eq!(peers.current(), [(7, 0)]);
        drop(a);
        drop(b);
        assert_eq!(peers.current(), [(7, 0)], "a call still runs");
        drop(call_copy);
        assert!(peers.current().is_empty());
        // A refused peer is never counted.
        let ep = WebEndpoint::new(Some(("nobody".into(), 65534)), peers.clone());
        assert!(ep
            .admit(PeerCred {
                pid: 9,
                uid: 1000,
                gid: 1000
            })
            .await
            .is_err());
        assert!(peers.current().is_empty());
    }
}
