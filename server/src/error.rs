//! The error of starting or running a member: anything that stops it, with its message.

/// What `engram` reports when it cannot start or keep running.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
