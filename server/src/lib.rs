//! Engram's server: etcd's v3 gRPC API over Engram's MVCC store, as one member of a cluster
//! of stateless brains (one leader, any number of followers) over a shared engine.
//!
//! [`run`] is the `engram` binary; [`Member`] is one running member, which tests start several
//! of in one process over one engine.

mod auth_info;
pub mod brain;
pub mod config;
mod error;
mod gateway;
mod grpc_call;
mod header;
mod http;
mod listen;
pub mod local_cluster;
mod member;
mod metrics;
mod migrate;
mod restore;
mod routes;
mod service;
mod space;
mod status;
mod tls;
mod unknown_method;

pub use error::BoxError;
pub use member::Member;

use config::{Command, Config};

/// Stack of each runtime thread. A Txn may nest 128 deep (as etcd's may), and each level is a
/// frame in decoding, evaluating and encoding it: in a debug build, a depth-100 Txn needs
/// between 1 and 1.5 MiB (measured), too close to the 2 MiB default.
const THREAD_STACK_BYTES: usize = 8 << 20;

/// The tokio runtime a member runs on, from `builder` (multi- or single-threaded).
///
/// Without tokio's LIFO slot. With it, a task woken by the task running runs right after it:
/// each request's HTTP/2 stream task, done with its response, wakes its connection's task,
/// which then runs at once and writes that one response to the socket. Answers come in
/// batches (a write batch answers up to a thousand requests at once), so without the slot the
/// stream tasks of a batch queue up first and the connection task writes their responses
/// together: 0.08 `writev` per put instead of 0.73 (256 clients on 8 connections), and gets
/// cost 13-25% less server CPU (bench/RESULTS.md, 2026-12-07, "The runtime without its LIFO
/// slot"). The setting is behind tokio's unstable cfg, which the workspace's
/// .cargo/config.toml sets.
pub fn runtime(mut builder: tokio::runtime::Builder) -> std::io::Result<tokio::runtime::Runtime> {
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder
        .enable_all()
        .thread_stack_size(THREAD_STACK_BYTES)
        .build()
}

/// Runs `engram` with `config` until SIGINT/SIGTERM (or a listener fails).
pub async fn run(config: Config) -> Result<(), BoxError> {
    let (mut member, failed) = match &config.command {
        Some(Command::Restore { snapshot }) => {
            return restore::run(snapshot, &config.data_dir, config.engine, &config).await;
        }
        Some(Command::Migrate(source)) => {
            let (member, failed) = migrate::start(source.clone(), config).await?;
            (member, Some(failed))
        }
        None => {
            let engine_config = config.engine_config(config.engine, &config.data_dir);
            let engine = backend::engine::open(&engine_config).await?;
            (Member::start(config, engine).await?, None)
        }
    };
    // A migration that cannot go on ends the process, with the reason.
    let failed = async {
        match failed {
            Some(failed) => failed.await.ok(),
            None => std::future::pending().await,
        }
    };
    let failure: Option<BoxError> = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down: handing over the lead first");
            None
        }
        result = member.serving() => result.err(),
        Some(reason) = failed => Some(reason.into()),
    };
    // A member that must restart (a migration that cannot go on, a storage engine to open
    // afresh) stops as gracefully as on a signal, then exits with the reason.
    member.shutdown().await;
    if let Some(failure) = failure {
        return Err(failure);
    }
    tracing::info!("engram shut down");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    /// The workspace's .cargo/config.toml builds with tokio's unstable cfg, which the runtime
    /// needs to turn off its LIFO slot (see [`super::runtime`]); a RUSTFLAGS variable that
    /// replaced it would build a server that writes one response per syscall.
    #[test]
    // A build setting, constant by nature.
    #[allow(clippy::assertions_on_constants)]
    fn built_with_tokio_unstable() {
        assert!(
            cfg!(tokio_unstable),
            "build with --cfg tokio_unstable (.cargo/config.toml; RUSTFLAGS replaces it)"
        );
    }
}
