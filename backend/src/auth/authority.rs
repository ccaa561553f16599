//! On whose authority a write reaches the writer, and the writer's check of it.

use super::error::AuthError;
use super::state::AuthState;

/// On whose authority a write reaches the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    /// The store's own work (lease expiry, replication of another etcd): never checked.
    Internal,
    /// A client's request, which the service checked against the auth state at auth revision
    /// `Some(rev)`, or `None` if authentication was disabled when it looked.
    Checked(Option<u64>),
}

impl Authority {
    /// Whether a request checked this way may still be applied under `state` (the writer's
    /// check, as etcd's apply-time check of the request header's auth revision).
    pub fn admit(&self, state: &AuthState) -> Result<(), AuthError> {
        match self {
            Authority::Internal => Ok(()),
            _ if !state.enabled() => Ok(()),
            Authority::Checked(None) => Err(AuthError::UserEmpty),
            Authority::Checked(Some(rev)) if *rev == state.revision() => Ok(()),
            Authority::Checked(Some(_)) => Err(AuthError::OldRevision),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_checked_before_an_auth_change_is_refused() {
        let disabled = AuthState::default();
        let mut enabled = AuthState::default();
        enabled.enabled = true;
        enabled.revision = 7;
        assert_eq!(Authority::Checked(None).admit(&disabled), Ok(()));
        assert_eq!(Authority::Checked(Some(3)).admit(&disabled), Ok(()));
        assert_eq!(Authority::Internal.admit(&enabled), Ok(()));
        assert_eq!(Authority::Checked(Some(7)).admit(&enabled), Ok(()));
        assert_eq!(
            Authority::Checked(Some(6)).admit(&enabled),
            Err(AuthError::OldRevision)
        );
        // Checked while authentication was off, applied once it is on.
        assert_eq!(
            Authority::Checked(None).admit(&enabled),
            Err(AuthError::UserEmpty)
        );
    }
}
