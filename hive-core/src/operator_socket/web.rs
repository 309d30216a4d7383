//! `web.sock`: the operator RPC for the gateway (`hive-web`). Only the
//! gateway's configured uid (or root) may connect; each call carries the
//! login the gateway authenticated, which becomes the operator in the audit
//! log. The request type is [`WebCall`], whose verbs are the dashboard's:
//! an admin-only verb cannot even be expressed here.

use std::future::Future;

use hive_proto::operator::{OperatorResponse, RpcError, WebCall};
use hive_proto::view::ErrorCode;

use super::Endpoint;
use crate::hive::{Hive, OperatorId};
use crate::peer::PeerCred;

/// Longest operator login the gateway may relay, in characters.
pub const MAX_LOGIN: usize = 64;

/// The web socket's peer policy.
#[derive(Clone, Debug)]
pub struct WebEndpoint {
    /// The gateway's user name and uid, resolved when the daemon starts;
    /// `None`: only root may connect.
    web_user: Option<(String, u32)>,
}

impl WebEndpoint {
    pub fn new(web_user: Option<(String, u32)>) -> Self {
        Self { web_user }
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
    type Caller = String;
    const SOCKET: &'static str = "web.sock";

    fn admit(&self, cred: PeerCred) -> impl Future<Output = Result<String, String>> + Send {
        std::future::ready(self.decide(cred))
    }

    fn describe(caller: &String) -> String {
        caller.clone()
    }

    async fn call(
        hive: Hive,
        _gateway: String,
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
        let ep = WebEndpoint::new(Some(("nobody".into(), 65534)));
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
        assert!(WebEndpoint::new(None).decide(cred(1000)).is_err());
    }
}
