//! etcd's authentication and authorization: users with passwords, roles with key-range
//! permissions, the root user and role, enabling and disabling, the auth revision, and the
//! checks every request passes.
//!
//! The state ([`AuthState`]) is durable in the engine's `AUTH` region ([`records`]) and changes
//! only through the store's writer ([`AuthChange`]), in order with every write: a write is
//! checked by the service against the state it read, at some auth revision, and the writer
//! refuses it if the state changed since ([`Authority`], etcd's "revision of auth store is
//! old"). Passwords are bcrypt hashes ([`password`]); tokens are signed, simple ([`token`]) or
//! JWTs ([`jwt`]), so any member of a brain cluster can check a token another member issued;
//! a follower vouches for the certificate user of a request it forwards ([`vouch`]).

mod authority;
mod change;
mod error;
pub mod jwt;
pub mod options;
pub mod password;
pub mod perms;
pub mod provider;
pub mod records;
mod state;
pub mod token;
pub mod vouch;

pub use authority::Authority;
#[cfg(test)]
pub(crate) use change::enable_with_root;
pub use change::{Applied, AuthChange, replicate};
pub use error::{AuthError, ROOT};
pub use perms::Access;
pub use state::AuthState;
