//! The etcd v3 gRPC services Engram answers.

pub mod auth;
pub mod cluster;
pub mod health;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;
