//! Tokens: what `Authenticate` hands out and every later request carries in its `token` (or
//! `authorization`) metadata.
//!
//! etcd's simple tokens are random strings each member remembers. Engram's members share no
//! memory, so a token is signed instead: `user.issued.stamp.mac`, where `issued` is when it was
//! made (ms since the epoch), `stamp` fingerprints the user's password hash (a changed password
//! or a deleted and re-created user invalidates it, as etcd invalidates the user's tokens) and
//! `mac` is an HMAC-SHA256 under the key made when authentication was enabled (disabling drops
//! the key, invalidating every token, as etcd does). Like etcd's, a token expires after
//! `--auth-token-ttl` without use: each member remembers when it last saw each token.

use super::state::AuthState;
use ring::hmac;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// etcd's default `--auth-token-ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// A new random token signing key.
pub fn new_key() -> bytes::Bytes {
    let mut key = [0u8; 32];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).is_err() {
        // The system's random source failed (it does not on Linux once booted): fall back to
        // a digest of what differs between calls, still unknown to clients.
        let seed = format!("{:?} {} {:p}", Instant::now(), std::process::id(), &key);
        key.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, seed.as_bytes()).as_ref());
    }
    bytes::Bytes::copy_from_slice(&key)
}

pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

pub(super) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The fingerprint of a password hash a token carries.
fn stamp(password_hash: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, password_hash);
    hex(&digest.as_ref()[..8])
}

/// Issues tokens and checks them, remembering when each was last used.
pub struct Tokens {
    ttl: Duration,
    /// Token → when this member last saw it.
    seen: Mutex<HashMap<String, Instant>>,
}

impl Tokens {
    pub fn new(ttl: Duration) -> Self {
        Tokens {
            ttl,
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A token for `user` under `state` (None if authentication is disabled or the user is
    /// gone).
    pub fn issue(&self, state: &AuthState, user: &str) -> Option<String> {
        let key = state.token_key()?;
        let found = state.user(user)?;
        let body = format!(
            "{}.{}.{}",
            hex(user.as_bytes()),
            now_ms(),
            stamp(&found.password)
        );
        let mac = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), body.as_bytes());
        let token = format!("{body}.{}", hex(mac.as_ref()));
        self.remember(&mut self.seen(), &token);
        Some(token)
    }

    /// Notes that `token` was used now.
    fn remember(&self, seen: &mut HashMap<String, Instant>, token: &str) {
        // A token in use: only its time moves (no allocation on a request's path).
        if let Some(last) = seen.get_mut(token) {
            *last = Instant::now();
            return;
        }
        // Forget expired tokens now and then, so the map holds about the tokens in use.
        if seen.len() >= 1024 && seen.len().is_power_of_two() {
            let ttl = self.ttl;
            seen.retain(|_, last| last.elapsed() < ttl);
        }
        seen.insert(token.to_owned(), Instant::now());
    }

    /// The user `token` names, if it is valid under `state` now.
    pub fn check(&self, state: &AuthState, token: &str) -> Option<String> {
        let key = state.token_key()?;
        let mut parts = token.split('.');
        let (user, issued, stamped, mac) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let body = &token[..token.len() - mac.len() - 1];
        let mac = unhex(mac)?;
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, key),
            body.as_bytes(),
            &mac,
        )
        .ok()?;
        let user = String::from_utf8(unhex(user)?).ok()?;
        let found = state.user(&user)?;
        if stamp(&found.password) != stamped {
            return None;
        }
        let issued: u64 = issued.parse().ok()?;
        let fresh = now_ms().saturating_sub(issued) < self.ttl.as_millis() as u64;
        let mut seen = self.seen();
        let recent = seen
            .get(token)
            .is_some_and(|last| last.elapsed() < self.ttl);
        if !(recent || fresh) {
            seen.remove(token);
            return None;
        }
        self.remember(&mut seen, token);
        Some(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::change::{AuthChange, enable_with_root};
    use crate::auth::error::ROOT;

    fn enabled_with(users: &[&str]) -> AuthState {
        let mut state = AuthState::default();
        let added = users.iter().map(|name| AuthChange::UserAdd {
            name: name.to_string(),
            password_hash: Some(format!("hash of {name}").into_bytes()),
            options: None,
        });
        for change in added.chain(enable_with_root(b"hash of root")) {
            state = change.apply(&state, new_key).unwrap().unwrap().state;
        }
        state
    }

    #[test]
    fn a_token_names_its_user_until_the_user_changes() {
        let tokens = Tokens::new(DEFAULT_TTL);
        let state = enabled_with(&["alice"]);
        let token = tokens.issue(&state, "alice").unwrap();
        assert_eq!(tokens.check(&state, &token).as_deref(), Some("alice"));
        // Tampered with: another user's name under the same signature.
        let forged = token.replacen(&hex(b"alice"), &hex(ROOT.as_bytes()), 1);
        assert_eq!(tokens.check(&state, &forged), None);
        assert_eq!(tokens.check(&state, "abcdefgh.12"), None);
        // A new password invalidates it.
        let changed = AuthChange::UserChangePassword {
            name: "alice".into(),
            password_hash: b"new hash".to_vec(),
        }
        .apply(&state, new_key)
        .unwrap()
        .unwrap()
        .state;
        assert_eq!(tokens.check(&changed, &token), None);
        // So does disabling authentication, even once it is enabled again.
        let disabled = AuthChange::Disable
            .apply(&state, new_key)
            .unwrap()
            .unwrap()
            .state;
        assert_eq!(tokens.check(&disabled, &token), None);
        let again = AuthChange::Enable
            .apply(&disabled, new_key)
            .unwrap()
            .unwrap()
            .state;
        assert_eq!(tokens.check(&again, &token), None);
    }

    #[test]
    fn an_unused_token_expires() {
        let tokens = Tokens::new(Duration::from_millis(30));
        let state = enabled_with(&["alice"]);
        let token = tokens.issue(&state, "alice").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(tokens.check(&state, &token).is_some());
        std::thread::sleep(Duration::from_millis(20));
        // Used 20 ms ago: still valid, though issued 40 ms ago.
        assert!(tokens.check(&state, &token).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(tokens.check(&state, &token), None);
    }
}
