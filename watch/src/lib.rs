//! The watch side of Engram: one ordered event log and the watchers that follow it.
//!
//! The store's writer hands every committed revision, in order, to the [`Hub`]: a bounded
//! in-memory window of recent revisions (KubeBrain's single point that orders events). Each
//! gRPC watch stream is served by one task ([`stream::serve`]) that owns that stream's watchers
//! and is the only sender on it, so responses on a stream are totally ordered. A watcher reads
//! forward from its next revision: from the window while it is there, from the store's history
//! ([`HistorySource`]) when it is not, so falling behind costs latency, never events.
//!
//! The window keeps a small tail, plus whatever a reader that is behind still needs (up to
//! its bound): each stream publishes where its slowest watcher is ([`readers`]).
//!
//! A follower's hub is fed by the leader's log over [`replication`], so watchers on any
//! member see the same revisions in the same order.

pub mod hub;
pub mod outbound;
pub mod readers;
pub mod replication;
pub mod source;
pub mod stats;
pub mod stream;
mod watcher;

pub use hub::{Hub, WindowLimits, WindowSize};
pub use source::HistorySource;
pub use stream::{Permit, StreamOptions, serve};
