//! The kind of tokens a member issues and accepts, chosen by `--auth-token`: Engram's signed
//! simple tokens ([`super::token`]) or JWTs ([`super::jwt`]).

use super::error::AuthError;
use super::jwt::JwtTokens;
use super::options::{JWT, JWT_OPTIONS, OptionsError, decompose};
use super::state::AuthState;
use super::token::Tokens;
use std::time::Duration;

/// A valid token's caller: the user, and the auth revision the token stands for (etcd's
/// `AuthInfo`). A simple token stands for the current revision; a JWT for the one it was
/// issued at, so that a change of users or roles makes it old.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenCaller {
    pub user: String,
    pub revision: u64,
}

pub enum TokenProvider {
    Simple(Tokens),
    Jwt(Box<JwtTokens>),
}

impl TokenProvider {
    /// The provider `--auth-token` names; simple tokens expire after `simple_ttl` unused
    /// (`--auth-token-ttl`), JWTs after their own `ttl` option.
    pub fn from_flag(spec: &str, simple_ttl: Duration) -> Result<Self, OptionsError> {
        let (kind, options) = decompose(spec)?;
        if kind != JWT {
            return Ok(TokenProvider::Simple(Tokens::new(simple_ttl)));
        }
        let unknown: Vec<&String> = options
            .keys()
            .filter(|name| !JWT_OPTIONS.contains(&name.as_str()))
            .collect();
        if !unknown.is_empty() {
            tracing::warn!(?unknown, "unknown JWT options, ignored");
        }
        Ok(TokenProvider::Jwt(Box::new(JwtTokens::from_options(
            &options,
        )?)))
    }

    /// A token for `user` under `state` (etcd's `assign`, at the current auth revision).
    pub fn issue(&self, state: &AuthState, user: &str) -> Result<String, AuthError> {
        match self {
            TokenProvider::Simple(tokens) => tokens.issue(state, user).ok_or(AuthError::AuthFailed),
            TokenProvider::Jwt(tokens) => tokens.issue(user, state.revision()),
        }
    }

    /// The caller `token` names under `state`, if it is valid.
    pub fn check(&self, state: &AuthState, token: &str) -> Option<TokenCaller> {
        match self {
            TokenProvider::Simple(tokens) => tokens.check(state, token).map(|user| TokenCaller {
                user,
                revision: state.revision(),
            }),
            TokenProvider::Jwt(tokens) => tokens.check(token).map(|c| TokenCaller {
                user: c.user,
                revision: c.revision,
            }),
        }
    }
}
