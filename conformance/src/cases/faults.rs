//! Group `faults` (needs `--restart-cmd`): the concurrency workload while the endpoint
//! is killed with SIGKILL and restarted. Operations in flight during a kill have an
//! unknown outcome; no acknowledged write may be lost, the history must stay
//! linearizable, and watchers that resume from their last revision + 1 must see the
//! store's history with no gap and no duplicate.

use std::time::Duration;

use anyhow::{Result, ensure};

use super::workload::{self, Config};
use crate::case;
use crate::case::{Case, Ctx};

const G: &str = "faults";

pub fn cases() -> Vec<Case> {
    vec![case!(G, cas_workload_across_kill_and_restart, restarts)]
}

async fn cas_workload_across_kill_and_restart(c: Ctx) -> Result<()> {
    let cfg = Config {
        keys: 4,
        clients: 6,
        max_iterations: 400,
        pace: Duration::from_millis(5),
        watchers: 3,
        restarts: 2,
    };
    let out = workload::run(&c, &cfg).await?;
    ensure!(
        out.resumes >= cfg.watchers,
        "no watcher stream broke during {} kill/restart cycles: does --restart-cmd kill the \
         endpoint? ({out})",
        out.restarts
    );
    ensure!(out.acked > cfg.keys, "no write was acknowledged: {out}");
    c.note(format!(
        "{} keys, {} clients, {} watchers, {} restarts: no acknowledged write lost, \
         linearizable, watchers resumed exactly",
        cfg.keys, cfg.clients, cfg.watchers, cfg.restarts
    ));
    c.detail(out.to_string());
    Ok(())
}
