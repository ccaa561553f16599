//! MoveLeader: the leader hands its lead to another registered member, as etcd's leader
//! transfers its leadership. The election writes the record released, naming the successor
//! (see `election::LeaderRecord::successor`): the successor takes it at once, the others only
//! after a lease, in case it is gone.

use super::{Brain, Role, election};
use backend::engine::EngineError;
use std::time::Duration;

/// Why MoveLeader was refused, in etcd's words.
#[derive(Debug, thiserror::Error)]
pub enum MoveLeaderError {
    #[error("etcdserver: not leader")]
    NotLeader,
    /// The target is not a registered member.
    #[error("etcdserver: bad leader transferee")]
    BadTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    TimedOut,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl Brain {
    /// Hands the lead to member `target` and waits until this member follows it; moving it
    /// to this member itself, the leader, is done at once.
    pub async fn move_leader(&self, target: u64) -> Result<(), MoveLeaderError> {
        if !matches!(self.role(), Role::Leader { .. }) {
            return Err(MoveLeaderError::NotLeader);
        }
        let members = election::members(&self.engine).await?;
        if !members.iter().any(|m| m.id == target) {
            return Err(MoveLeaderError::BadTransferee);
        }
        if target == self.member_id {
            return Ok(());
        }
        let mut roles = self.role.subscribe();
        self.handover.send_replace(target);
        let followed = |role: &Role| matches!(role, Role::Follower { leader, .. } if leader.record.member_id == target);
        let wait = self.options.election.lease * 2 + Duration::from_secs(1);
        match tokio::time::timeout(wait, roles.wait_for(followed)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(MoveLeaderError::TimedOut),
        }
    }
}
