//! `engram migrate`: a running etcd cluster moved onto Engram, every revision unchanged, and
//! back if need be (a snapshot of Engram restores into etcd: see `backend::etcd`).
//!
//! 1. A snapshot of the source is streamed to a file beside the new data directory (never held
//!    in memory), checked and restored there (`backend::etcd::import`): same keys, versions,
//!    revisions, compaction, leases, users, roles and auth revision. A source with
//!    authentication enabled is read as a user with the root role (`ETCDCTL_USER`, see
//!    `source.rs`).
//! 2. The member starts on it, replicating: it serves reads and watches (a watcher sees the
//!    source's revisions as they arrive) and refuses writes with etcd's `rpc not supported for
//!    learner` (`follow.rs`). It follows the source with a watch of the whole keyspace from the
//!    snapshot's revision + 1 and applies each revision as the same revision here. Leases are
//!    not in the watch stream: they are read every `--lease-poll-interval`; the source's
//!    compaction is looked for every 10 s and done here too, and so is its auth revision: if
//!    users, roles or the enabled flag changed there, they are copied again from a fresh
//!    snapshot (`auth.rs`). A broken stream resumes from the next revision; a source that
//!    compacted past it stops the migration, which says so.
//! 3. The cut-over (`cutover.rs`): once the operator has stopped the source's writers,
//!    `POST /migration/cutover` checks that Engram has the source's latest revision and the same
//!    HashKV there and the same users and roles (copying them once more if they moved), and
//!    makes Engram take writes from the next revision on.
//!
//! Started on a data directory that holds a store already (a migration that was interrupted),
//! it follows on from that store's revision without a new snapshot, unless the source has
//! compacted its history past that revision meanwhile: then it starts again from a fresh
//! snapshot, and says so. A source that compacts past a running migration (one that fell that
//! far behind) ends the process with that advice: its supervisor restarts it, and it starts
//! again from a fresh snapshot.

mod auth;
mod cutover;
mod follow;
mod source;

use crate::config::{Config, MigrateArgs};
use crate::error::BoxError;
use crate::member::Member;
use backend::engine::{AnyEngine, Engine};
use backend::etcd::import;
use follow::Migration;
use source::{Credentials, Source};
use tokio::sync::oneshot;

/// Copies the source into the data directory (unless it holds a store already), starts the
/// member replicating it, and starts following.
pub async fn start(
    args: MigrateArgs,
    config: Config,
) -> Result<(Member, oneshot::Receiver<String>), BoxError> {
    let source = Source::connect(&args, Credentials::from_env()?)?;
    let dir = &config.data_dir;
    let holds_data = dir.is_dir() && std::fs::read_dir(dir)?.next().is_some();
    let resumed = if holds_data {
        resume(&source, &config).await?
    } else {
        None
    };
    let engine = match resumed {
        Some(engine) => engine,
        None => {
            // Nothing half-written stays: the directory was new or empty, or held a store
            // the source has compacted past.
            let copied = copy(&source, &config).await;
            if copied.is_err() {
                let _ = std::fs::remove_dir_all(dir);
            }
            copied?
        }
    };
    let (fatal, failed) = oneshot::channel();
    let migration = Migration::new(
        source,
        args.lease_poll_interval,
        config.data_dir.clone(),
        fatal,
    );
    let routes = cutover::routes(migration.clone());
    let member = Member::start_with(config, engine, routes).await?;
    migration.start(member.brain.clone());
    Ok((member, failed))
}

/// The store in the data directory, if following can go on from its revision; `None` (the
/// directory emptied) if the source has compacted past it.
async fn resume(source: &Source, config: &Config) -> Result<Option<AnyEngine>, BoxError> {
    let engine =
        backend::engine::open(&config.engine_config(config.engine, &config.data_dir)).await?;
    let revision = backend::Store::open_follower(engine.clone(), config.max_request_bytes)
        .await?
        .revision();
    let current = source
        .revision()
        .await
        .map_err(|s| format!("{}: {}", source.url, source::explain(&s)))?;
    let compacted = source
        .compacted(current)
        .await
        .map_err(|s| format!("{}: {}", source.url, source::explain(&s)))?;
    if compacted <= revision + 1 {
        tracing::info!(
            revision,
            data_dir = %config.data_dir.display(),
            "the data directory holds a store: following the source on from its revision"
        );
        return Ok(Some(engine));
    }
    tracing::warn!(
        revision,
        compacted,
        "the source compacted its history past this store's revision: starting again from a \
         fresh snapshot"
    );
    // Every handle to the engine is gone before its files are.
    drop(engine);
    for entry in std::fs::read_dir(&config.data_dir)? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(path)?;
        } else {
            std::fs::remove_file(path)?;
        }
    }
    Ok(None)
}

/// Streams a snapshot of the source into a file in the new data directory, checks it, and
/// restores it into the engine opened there.
async fn copy(source: &Source, config: &Config) -> Result<AnyEngine, BoxError> {
    std::fs::create_dir_all(&config.data_dir)?;
    let path = config.data_dir.join("migration-snapshot.db");
    let started = std::time::Instant::now();
    let fetched = async {
        let mut file = std::fs::File::create(&path)?;
        let bytes = source
            .snapshot_to(&mut file)
            .await
            .map_err(|e| format!("snapshot of {}: {e}", source.url))?;
        let verified =
            import::verify(&path).map_err(|e| format!("snapshot of {}: {e}", source.url))?;
        Ok::<_, BoxError>((bytes, verified))
    }
    .await;
    let (bytes, verified) = match fetched {
        Ok(fetched) => fetched,
        Err(err) => {
            let _ = std::fs::remove_file(&path);
            return Err(err);
        }
    };
    let engine =
        backend::engine::open(&config.engine_config(config.engine, &config.data_dir)).await?;
    let imported = import::import(&engine, &verified).await;
    let _ = std::fs::remove_file(&path);
    let imported = imported?;
    engine.sync().await?;
    tracing::info!(
        source = %source.url,
        bytes,
        revision = imported.revision,
        compacted = imported.compacted,
        keys = imported.keys,
        leases = imported.leases,
        users = imported.auth.users,
        roles = imported.auth.roles,
        auth_enabled = imported.auth.enabled,
        auth_revision = imported.auth.revision,
        took_ms = started.elapsed().as_millis() as u64,
        "copied a snapshot of the source"
    );
    for (what, count) in &imported.left_behind {
        tracing::warn!(what, count, "not carried over from the source");
    }
    Ok(engine)
}
