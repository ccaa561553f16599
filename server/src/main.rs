//! The `engram` binary: etcd's v3 gRPC API over Engram's MVCC store (see the `server` library).

use clap::Parser;
use server::config::Config;

/// glibc's allocator spent ~17% of the server's CPU under write load (fragmentation of the
/// many short-lived request buffers); mimalloc is built for exactly that pattern.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let runtime = match server::runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("engram: starting the runtime: {err}");
            std::process::exit(1);
        }
    };
    runtime.block_on(serve());
}

async fn serve() {
    let config = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(err) = server::run(config).await {
        tracing::error!(%err, "engram stopped");
        eprintln!("engram: {err}");
        std::process::exit(1);
    }
}
