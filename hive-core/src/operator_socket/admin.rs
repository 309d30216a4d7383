//! `admin.sock`: the operator RPC for a shell user (`hivectl`). The peer
//! must be root, the daemon's own uid, or a member of the configured admin
//! group (primary or supplementary, from the group database, or running
//! with that group as its effective gid); the operator the audit log names
//! is the user the kernel reported, never a name the client sends.

use std::future::Future;

use hive_proto::operator::{AdminRequest, OperatorResponse, RpcError};

use super::Endpoint;
use crate::hive::{Hive, OperatorId};
use crate::peer::{self, PeerCred};
use crate::secrets;

/// The admin socket's peer policy.
#[derive(Clone, Debug)]
pub struct AdminEndpoint {
    /// The admin group's name and gid, resolved when the daemon starts.
    admin_group: Option<(String, u32)>,
    /// The daemon's own uid: a peer with it can already do anything.
    own_uid: u32,
}

impl AdminEndpoint {
    pub fn new(admin_group: Option<(String, u32)>) -> Self {
        Self {
            admin_group,
            own_uid: peer::own_uid(),
        }
    }

    /// The policy itself, run off the async threads because the user and
    /// group databases may block.
    fn decide(&self, cred: PeerCred) -> Result<OperatorId, String> {
        let user = peer::lookup_uid(cred.uid).map_err(|e| {
            tracing::error!(error = %e, "admin socket: user lookup failed");
            "the core could not look up your uid; see its log".to_string()
        })?;
        let name = match &user {
            Some(u) => u.name.clone(),
            None => format!("uid{}", cred.uid),
        };
        let who = OperatorId::Shell {
            user: name.clone(),
            uid: cred.uid,
        };
        if cred.uid == 0 || cred.uid == self.own_uid {
            return Ok(who);
        }
        let Some((group, gid)) = &self.admin_group else {
            return Err(format!(
                "user {name} (uid {}) is not root, and this core has no admin group",
                cred.uid
            ));
        };
        let member = cred.gid == *gid
            || match &user {
                Some(u) => peer::user_in_group(u, *gid).map_err(|e| {
                    tracing::error!(error = %e, "admin socket: group lookup failed");
                    "the core could not look up your groups; see its log".to_string()
                })?,
                None => false,
            };
        if member {
            Ok(who)
        } else {
            Err(format!(
                "user {name} (uid {}) is not root and not in group {group}",
                cred.uid
            ))
        }
    }
}

impl Endpoint for AdminEndpoint {
    type Request = AdminRequest;
    type Caller = OperatorId;
    const SOCKET: &'static str = "admin.sock";

    fn admit(&self, cred: PeerCred) -> impl Future<Output = Result<OperatorId, String>> + Send {
        let this = self.clone();
        async move {
            tokio::task::spawn_blocking(move || this.decide(cred))
                .await
                .unwrap_or_else(|_| Err("the core's peer check failed; see its log".into()))
        }
    }

    fn describe(caller: &OperatorId) -> String {
        match caller {
            OperatorId::Shell { user, .. } => user.clone(),
            OperatorId::Web { login } => login.clone(),
        }
    }

    async fn call(
        hive: Hive,
        caller: OperatorId,
        req: AdminRequest,
    ) -> Result<OperatorResponse, RpcError> {
        let result = match req {
            AdminRequest::Operator(req) => hive.operator_call(&caller, req).await,
            AdminRequest::AuditVerify => hive.audit_verify(&caller).await,
            AdminRequest::Purge { name } => hive.purge(&caller, name).await,
            AdminRequest::SecretSet { agent, key, value } => {
                secrets::set(&hive, &caller, agent, key, value).await
            }
            AdminRequest::SecretRemove { agent, key } => {
                secrets::remove(&hive, &caller, agent, key).await
            }
            AdminRequest::AuditExport { since, limit } => {
                hive.audit_export(&caller, since, limit).await
            }
            AdminRequest::Doctor => {
                tracing::info!(operator = %caller.actor(), "hivectl doctor: checking the host");
                Ok(OperatorResponse::Doctor(crate::doctor::run(&hive).await))
            }
            other => hive.admin_config_call(&caller, other).await,
        };
        result.map_err(RpcError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(uid: u32, gid: u32) -> PeerCred {
        PeerCred { pid: 1, uid, gid }
    }

    #[test]
    fn root_is_admitted_and_named_by_the_kernel_uid() {
        let ep = AdminEndpoint::new(None);
        let who = ep.decide(cred(0, 0)).unwrap();
        assert_eq!(
            who,
            OperatorId::Shell {
                user: "root".into(),
                uid: 0
            }
        );
    }

    #[test]
    fn a_stranger_is_refused_with_a_reason() {
        // Pretend the daemon is some other uid so "own uid" does not apply.
        let ep = AdminEndpoint {
            admin_group: Some(("root".into(), 0)),
            own_uid: 4242,
        };
        let err = ep.decide(cred(65534, 65534)).unwrap_err();
        assert!(err.contains("not in group root"), "{err}");
        // Running with the admin group as effective gid is membership.
        assert!(ep.decide(cred(65534, 0)).is_ok());
    }
}
