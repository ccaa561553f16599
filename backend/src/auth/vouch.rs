//! The user of a client certificate, vouched for by the member that forwards the client's
//! request to the leader.
//!
//! Under `--client-cert-auth` a request without a token is made as the user its certificate's
//! common name names (etcd's `AuthInfoFromTLS`). A follower forwards writes to the leader over
//! its own connection, with its own certificate, so the leader cannot see the client's: the
//! follower says whose request it is, signed with the token key every member reads from the
//! `AUTH` region (`hex(user).issued.mac`, HMAC-SHA256 over a label of its own, so that it can
//! never pass for a token). Only members know that key; a vouch older than [`WINDOW_MS`] is
//! refused, so one seen on the wire cannot be replayed for long.

use super::state::AuthState;
use super::token::{hex, now_ms, unhex};
use ring::hmac;

/// How long a vouch stays acceptable (ms): it is checked at once, so this only has to cover
/// the members' clock skew.
pub const WINDOW_MS: u64 = 300_000;

/// What the MAC covers, besides the vouch's body.
const LABEL: &[u8] = b"engram forwarded certificate user\0";

/// What the MAC is computed over.
fn signed(body: &str) -> Vec<u8> {
    [LABEL, body.as_bytes()].concat()
}

/// A vouch for `user` under `state` (None while authentication is disabled: no key).
pub fn vouch(state: &AuthState, user: &str) -> Option<String> {
    vouch_at(state, user, now_ms())
}

fn vouch_at(state: &AuthState, user: &str, issued: u64) -> Option<String> {
    let key = state.token_key()?;
    let body = format!("{}.{issued}", hex(user.as_bytes()));
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), &signed(&body));
    Some(format!("{body}.{}", hex(tag.as_ref())))
}

/// The user `text` vouches for, if a member made it under `state`'s key within the window.
pub fn vouched(state: &AuthState, text: &str) -> Option<String> {
    let key = state.token_key()?;
    let (body, tag) = text.rsplit_once('.')?;
    let (user, issued) = body.split_once('.')?;
    let tag = unhex(tag)?;
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), &signed(body), &tag).ok()?;
    let issued: u64 = issued.parse().ok()?;
    if now_ms().abs_diff(issued) > WINDOW_MS {
        return None;
    }
    String::from_utf8(unhex(user)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::change::{AuthChange, enable_with_root};
    use crate::auth::token::new_key;

    fn enabled() -> AuthState {
        let mut state = AuthState::default();
        for change in enable_with_root(b"h") {
            state = change.apply(&state, new_key).unwrap().unwrap().state;
        }
        state
    }

    #[test]
    fn only_a_fresh_vouch_under_the_same_key_names_its_user() {
        let state = enabled();
        let text = vouch(&state, "alice").unwrap();
        assert_eq!(vouched(&state, &text).as_deref(), Some("alice"));
        // Another user's name under the same MAC.
        let forged = text.replacen(&hex(b"alice"), &hex(b"root"), 1);
        assert_eq!(vouched(&state, &forged), None);
        // Too old.
        let old = vouch_at(&state, "alice", now_ms() - WINDOW_MS - 1000).unwrap();
        assert_eq!(vouched(&state, &old), None);
        // Another key (authentication disabled and enabled again).
        let disabled = AuthChange::Disable
            .apply(&state, new_key)
            .unwrap()
            .unwrap()
            .state;
        assert_eq!(vouch(&disabled, "alice"), None);
        let again = AuthChange::Enable
            .apply(&disabled, new_key)
            .unwrap()
            .unwrap()
            .state;
        assert_eq!(vouched(&again, &text), None);
        // A simple token is not a vouch, nor the other way round.
        let token = crate::auth::token::Tokens::new(std::time::Duration::from_secs(60))
            .issue(&state, "root")
            .unwrap();
        assert_eq!(vouched(&state, &token), None);
        assert_eq!(vouched(&state, ""), None);
    }
}
