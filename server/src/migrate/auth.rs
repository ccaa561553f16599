//! Users, roles and the enabled flag of the source while it is followed.
//!
//! The snapshot a migration starts from carries them (`backend::etcd::import`), but later
//! changes are not in the watch stream, and the API shows no password hash, so they cannot be
//! read one by one. What the API does show is the source's auth revision, which every change
//! of a user, role or permission moves, as does disabling, while enabling flips the flag: the
//! pair is equal on both sides exactly when nothing changed since the copy. When it differs,
//! a fresh snapshot of the source is taken and only its auth buckets are read, so password
//! hashes come along exactly; that costs a whole snapshot, but auth changes are rare.

use super::source::{Source, explain};
use crate::brain::Store;
use crate::error::BoxError;
use backend::auth::AuthState;
use backend::etcd::import;
use std::path::Path;

/// Where a copy of the source is written while its auth buckets are read (then removed).
const AUTH_SNAPSHOT: &str = "migration-auth.db";

/// Whether authentication is enabled, and the auth revision.
pub type AuthMark = (bool, u64);

/// The store's [`AuthMark`].
pub fn mark(store: &Store) -> AuthMark {
    let auth = store.auth();
    (auth.enabled(), auth.revision())
}

/// The source's [`AuthMark`]; `None` from a source that cannot tell (etcd before 3.5 has no
/// auth revision in AuthStatus): its users and roles are those of the copy.
pub async fn source_mark(source: &Source) -> Result<Option<AuthMark>, String> {
    match source.auth_status().await {
        Ok(mark) => Ok(Some(mark)),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            tracing::warn!(
                source = %source.url,
                "the source tells no auth revision: its users and roles are those of the copy"
            );
            Ok(None)
        }
        Err(status) => Err(format!(
            "reading the source's auth status: {}",
            explain(&status)
        )),
    }
}

/// Makes the store's users, roles, enabled flag and auth revision the source's if its mark
/// differs from the store's. Returns the mark copied, `None` if they were the same.
pub async fn sync(
    source: &Source,
    store: &Store,
    dir: &Path,
) -> Result<Option<AuthMark>, BoxError> {
    let Some(theirs) = source_mark(source).await? else {
        return Ok(None);
    };
    let ours = mark(store);
    if ours == theirs {
        return Ok(None);
    }
    let state = fetch(source, dir).await?;
    let copied = (state.enabled(), state.revision());
    store.replicate_auth(state).await?;
    tracing::info!(
        source = %source.url,
        enabled = copied.0,
        auth_revision = copied.1,
        was = ours.1,
        "copied the source's users and roles (they changed since they were last copied)"
    );
    Ok(Some(copied))
}

/// The auth state of a fresh snapshot of the source, written to a file in `dir` and checked
/// (SHA-256, every page) before it is read.
async fn fetch(source: &Source, dir: &Path) -> Result<AuthState, BoxError> {
    let path = dir.join(AUTH_SNAPSHOT);
    let read = async {
        let mut file = std::fs::File::create(&path)?;
        source
            .snapshot_to(&mut file)
            .await
            .map_err(|e| format!("snapshot of {}: {e}", source.url))?;
        let at = path.clone();
        let state = tokio::task::spawn_blocking(move || {
            import::verify(&at).and_then(|verified| import::auth_of(&verified))
        })
        .await
        .map_err(|_| "reading the snapshot's auth buckets stopped")?
        .map_err(|e| format!("snapshot of {}: {e}", source.url))?;
        Ok::<_, BoxError>(state)
    }
    .await;
    let _ = std::fs::remove_file(&path);
    read
}
