//! The etcd v3 gRPC services Engram answers.

pub mod auth;
pub mod cluster;
pub mod election;
pub mod health;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod recipes;
pub mod watch;
