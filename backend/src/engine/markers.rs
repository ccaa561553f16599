//! What each on-disk engine keeps in a data directory. Starting with the wrong `--engine` must
//! fail, not look like an empty store, so each engine checks for the others' marks first.

use super::{EngineError, EngineResult};
use std::path::Path;

/// The LSM engine's folder inside the data directory.
pub(crate) const LSM_DIR: &str = "lsm";
/// The B-tree engine's database file inside the data directory.
pub(crate) const BTREE_FILE: &str = "engram.redb";

/// Each on-disk engine (as `--engine` names it) and what it leaves in a data directory.
const ON_DISK: &[(&str, &str)] = &[("lsm", LSM_DIR), ("btree", BTREE_FILE)];

/// Refuses to open `data_dir` with engine `opening` when another engine's data is there.
pub(crate) fn check_data_dir(data_dir: &Path, opening: &str) -> EngineResult<()> {
    for (engine, mark) in ON_DISK {
        if *engine != opening && data_dir.join(mark).exists() {
            return Err(EngineError::OtherEngine {
                dir: data_dir.display().to_string(),
                engine,
            });
        }
    }
    Ok(())
}
