//! Workloads: connection setup (`ctx.rs`), pre-population (`populate.rs`), and the
//! closed-loop driver (`driver.rs`) that runs `--clients` concurrent operations until
//! `--ops` / `--duration` / `--max-duration`; the workloads themselves (`kv.rs`, `kube.rs`,
//! `watch.rs`), and `dispatch.rs`, which prepares and runs the one `--workload` names.

mod auth;
mod ctx;
mod dispatch;
mod driver;
mod keys;
mod kube;
mod kv;
mod populate;
mod rng;
mod watch;
mod watch_wire;

pub use ctx::Ctx;
pub use dispatch::{prepare, run};
pub use driver::{Failure, RunResult, drive};
pub use keys::key;
pub use rng::random_value;
pub use watch::EVENTS_DELIVERED;
