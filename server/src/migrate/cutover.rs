//! The operator's side of a migration, on every client URL: `GET /migration` says where it
//! stands, `POST /migration/cutover` makes Engram take over once the source's writers are
//! stopped.

use super::auth;
use super::follow::{Migration, Stage};
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use http::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the cut-over waits for the store to apply the source's last revision.
const CATCH_UP: Duration = Duration::from_secs(30);

pub fn routes(migration: Arc<Migration>) -> Router {
    Router::new()
        .route("/migration", get(status))
        .route("/migration/cutover", post(cutover))
        .with_state(migration)
}

async fn status(State(migration): State<Arc<Migration>>) -> Json<Value> {
    let (applied, compacted, lag, (auth_enabled, auth_revision)) = match migration.brain() {
        Some(brain) => {
            let store = brain.store();
            let mark = auth::mark(&store);
            (
                store.revision(),
                store.compacted(),
                brain.replication_lag(),
                mark,
            )
        }
        None => (0, -1, None, (false, 0)),
    };
    let mut out = json!({
        "source": migration.source.url,
        "applied_revision": applied,
        "compacted_revision": compacted,
        "leases": migration.lease_count(),
        "auth_enabled": auth_enabled,
        "auth_revision": auth_revision,
    });
    match migration.stage() {
        Stage::Following => {
            out["state"] = json!("following");
            out["lag"] = json!(lag.unwrap_or(0));
        }
        Stage::CutOver { revision } => {
            out["state"] = json!("cut over");
            out["cut_over_at"] = json!(revision);
        }
        Stage::Failed(reason) => {
            out["state"] = json!("failed");
            out["error"] = json!(reason);
        }
    }
    Json(out)
}

/// Takes over from the source, or says why not (409).
async fn cutover(State(migration): State<Arc<Migration>>) -> (StatusCode, Json<Value>) {
    match take_over(&migration).await {
        Ok((revision, hash)) => (
            StatusCode::OK,
            Json(json!({ "state": "cut over", "revision": revision, "hash": hash })),
        ),
        Err(reason) => {
            tracing::warn!(%reason, "cut-over refused");
            (StatusCode::CONFLICT, Json(json!({ "error": reason })))
        }
    }
}

/// The cut-over: the store has applied the source's latest revision, the leases are the
/// source's, both are compacted alike, HashKV is the same on both at that revision, the users,
/// roles and enabled flag are the source's (the same auth revision), and the source did not
/// move meanwhile; then following stops and the store takes writes, its next revision the
/// source's + 1.
async fn take_over(migration: &Migration) -> Result<(i64, u32), String> {
    let _one = migration.cutting_over.lock().await;
    match migration.stage() {
        Stage::Following => {}
        Stage::CutOver { revision } => {
            return Err(format!("already cut over at revision {revision}"));
        }
        Stage::Failed(reason) => return Err(format!("the migration failed: {reason}")),
    }
    let brain = migration
        .brain()
        .ok_or("the member is still starting")?
        .clone();
    let source = &migration.source;
    let at = source
        .revision()
        .await
        .map_err(|s| format!("reading the source's revision: {}", s.message()))?;
    let deadline = Instant::now() + CATCH_UP;
    while brain.store().revision() < at {
        if Instant::now() > deadline {
            return Err(format!(
                "not caught up: applied revision {} of the source's {at} after {CATCH_UP:?}",
                brain.store().revision()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    migration
        .sync_leases()
        .await
        .map_err(|e| format!("reading the source's leases: {e}"))?;
    // Compacted alike first (compaction changes HashKV), then both hashes at once: each
    // reads the whole store.
    let compacted = source
        .compacted(at)
        .await
        .map_err(|s| format!("reading the source's compaction: {}", s.message()))?;
    migration
        .mirror_compaction(compacted)
        .await
        .map_err(|e| format!("compacting as the source did: {e}"))?;
    let store = brain.store();
    let (theirs, ours) = tokio::join!(source.hash_kv(), store.hash_kv(0));
    let theirs = theirs.map_err(|s| format!("HashKV of the source: {}", s.message()))?;
    let ours = ours.map_err(|e| format!("HashKV here: {e}"))?;
    if theirs.revision != at {
        return Err(moved(at, theirs.revision));
    }
    if theirs.compacted > compacted.max(1) {
        return Err(format!(
            "the source compacted at revision {} during the cut-over; try again",
            theirs.compacted
        ));
    }
    if ours.current != at {
        return Err(format!(
            "this store is at revision {}, the source at {at}",
            ours.current
        ));
    }
    if ours.hash != theirs.hash {
        return Err(format!(
            "HashKV differs at revision {at}: the source's {}, this store's {}",
            theirs.hash, ours.hash
        ));
    }
    // Users and roles are not in the watch stream: copied again if they moved since the last
    // look (from a fresh snapshot: password hashes are in no API answer), then checked.
    migration
        .sync_auth()
        .await
        .map_err(|e| format!("copying the source's users and roles: {e}"))?;
    let now = source
        .revision()
        .await
        .map_err(|s| format!("reading the source's revision: {}", s.message()))?;
    if now != at {
        return Err(moved(at, now));
    }
    let (there, here) = (auth::source_mark(source).await?, auth::mark(&store));
    if let Some(there) = there
        && there != here
    {
        return Err(format!(
            "users, roles or the enabled flag changed on the source during the cut-over (auth \
             revision {} and enabled {} there, {} and {} here): stop changing them and try again",
            there.1, there.0, here.1, here.0
        ));
    }
    // No copy of the source's users and roles runs past the cut-over: one under way finishes
    // first, and none starts before following stops.
    let _no_auth_copy = migration.auth_sync.lock().await;
    migration.stop(Stage::CutOver { revision: at });
    brain.end_replication();
    tracing::info!(
        revision = at,
        hash = ours.hash,
        source = %source.url,
        "cut over: Engram serves writes from revision {} on", at + 1
    );
    Ok((at, ours.hash))
}

fn moved(from: i64, to: i64) -> String {
    format!(
        "the source moved from revision {from} to {to} during the cut-over: stop every writer of \
         the source (for Kubernetes, the kube-apiservers) and try again"
    )
}
