//! Engram's server: etcd's v3 gRPC API over Engram's MVCC store, as one member of a cluster
//! of stateless brains (one leader, any number of followers) over a shared engine.
//!
//! [`run`] is the `engram` binary; [`Member`] is one running member, which tests start several
//! of in one process over one engine.

pub mod brain;
pub mod config;
mod error;
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
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down: handing over the lead first");
            member.shutdown().await;
        }
        result = member.serving() => result?,
        Some(reason) = failed => {
            member.shutdown().await;
            return Err(reason.into());
        }
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
