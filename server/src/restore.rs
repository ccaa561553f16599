//! `engram restore`: a snapshot file into a fresh data directory.

use crate::config::{Config, EngineKind};
use crate::error::BoxError;
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
    let file = std::io::BufReader::new(
        std::fs::File::open(snapshot).map_err(|e| format!("{}: {e}", snapshot.display()))?,
    );
    // The restored directory is created here, so it takes the creation-time options.
    let engine = backend::engine::open(&config.engine_config(kind, data_dir)).await?;
    let entries = backend::snapshot::restore(&engine, file).await?;
    tracing::info!(entries, data_dir = %data_dir.display(), "snapshot restored");
    println!("restored {entries} entries into {}", data_dir.display());
    Ok(())
}
