//! The operator verbs, applied for the operator the socket established.

use hive_proto::operator::{OperatorRequest, OperatorResponse};

use super::{Hive, OperatorId, Refusal};

impl Hive {
    /// Applies one operator request for `who`.
    pub async fn operator_call(
        &self,
        who: &OperatorId,
        req: OperatorRequest,
    ) -> Result<OperatorResponse, Refusal> {
        let _ = (who, req);
        todo!()
    }

    /// Recomputes the audit chain (admin socket only).
    pub async fn audit_verify(&self, who: &OperatorId) -> Result<OperatorResponse, Refusal> {
        let _ = who;
        todo!()
    }
}
