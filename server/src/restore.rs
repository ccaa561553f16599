//! `engram restore`: a backup into a new data directory. It takes etcd's own backups (the
//! file `etcdctl snapshot save` writes, against etcd or Engram, or a member's
//! `member/snap/db`) and the files older Engram releases wrote, told apart by their content.
//! Users, roles and the enabled flag come along with the keys (the restored store loads them
//! when it opens). Nothing is written until the file has been checked, and a restore that
//! fails leaves no data directory behind.

use crate::config::{Config, EngineKind};
use crate::error::BoxError;
use backend::etcd::import;
use std::path::Path;

/// Restores `snapshot` into `data_dir`, a new directory of engine `kind`.
pub async fn run(
    snapshot: &Path,
    data_dir: &Path,
    kind: EngineKind,
    config: &Config,
) -> Result<(), BoxError> {
    if matches!(kind, EngineKind::Memory | EngineKind::Tikv) {
        return Err("restore writes a data directory: --engine lsm or btree".into());
    }
    let existed = data_dir.exists();
    if existed
        && std::fs::read_dir(data_dir)
            .map_err(|e| format!("{}: {e}", data_dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!(
            "{} is not empty: restore into a new directory",
            data_dir.display()
        )
        .into());
    }
    std::fs::File::open(snapshot).map_err(|e| format!("{}: {e}", snapshot.display()))?;
    let restored = restore(snapshot, data_dir, kind, config).await;
    if restored.is_err() {
        // Nothing half-written stays: the directory was new or empty.
        let _ = if existed {
            empty(data_dir)
        } else {
            std::fs::remove_dir_all(data_dir)
        };
    }
    restored
}

async fn restore(
    snapshot: &Path,
    data_dir: &Path,
    kind: EngineKind,
    config: &Config,
) -> Result<(), BoxError> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", snapshot.display());
    if import::is_etcd_db(snapshot) {
        // Checked before the data directory is created.
        let verified = import::verify(snapshot).map_err(|e| at(&e))?;
        // The restored directory is created here, so it takes the creation-time options.
        let engine = backend::engine::open(&config.engine_config(kind, data_dir)).await?;
        let imported = import::import(&engine, &verified)
            .await
            .map_err(|e| at(&e))?;
        engine_sync(&engine).await?;
        println!(
            "restored an etcd database into {}: revision {}, compacted at {}, {} keys ({} versions), {} leases{}",
            data_dir.display(),
            imported.revision,
            imported.compacted,
            imported.keys,
            imported.rows,
            imported.leases,
            if imported.checksummed {
                ", SHA-256 checked"
            } else {
                " (no SHA-256 trailer to check)"
            },
        );
        let auth = &imported.auth;
        println!(
            "with {} users and {} roles, authentication {} (auth revision {})",
            auth.users,
            auth.roles,
            if auth.enabled { "enabled" } else { "disabled" },
            auth.revision,
        );
        for (what, count) in &imported.left_behind {
            let why = match what.as_str() {
                "members" | "members_removed" => {
                    ": Engram members register themselves when they start"
                }
                _ => "",
            };
            println!("not carried over: {what} ({count} entries){why}");
        }
        tracing::info!(revision = imported.revision, data_dir = %data_dir.display(), "etcd snapshot restored");
        return Ok(());
    }
    let file = std::io::BufReader::new(std::fs::File::open(snapshot).map_err(|e| at(&e))?);
    let engine = backend::engine::open(&config.engine_config(kind, data_dir)).await?;
    let entries = backend::snapshot::restore(&engine, file)
        .await
        .map_err(|e| at(&e))?;
    engine_sync(&engine).await?;
    tracing::info!(entries, data_dir = %data_dir.display(), "snapshot restored");
    println!("restored {entries} entries into {}", data_dir.display());
    Ok(())
}

async fn engine_sync(engine: &backend::engine::AnyEngine) -> Result<(), BoxError> {
    use backend::engine::Engine;
    Ok(engine.sync().await?)
}

/// Removes what is inside `dir`.
fn empty(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(path)?;
        } else {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}
