//! `--auth-token`: etcd's token options, `simple` or `jwt,pub-key=<file>,priv-key=<file>,
//! sign-method=<alg>,ttl=<duration>`, and the ways etcd refuses them at startup, with its
//! wording (`server/auth/store.go`'s `decomposeOpts`, `options.go`).

use std::collections::BTreeMap;
use std::path::Path;

/// Why `--auth-token` was refused. etcd logs the detail and fails with its error; both are
/// said here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// Malformed options, an unreadable key file, a bad ttl or an unknown token type.
    #[error("auth: invalid auth options ({0})")]
    Invalid(String),
    /// A `sign-method` etcd does not know (or none).
    #[error("auth: invalid auth options (auth: invalid auth signature method)")]
    InvalidMethod,
    /// A method etcd knows that Engram cannot sign with.
    #[error("unsupported signing method: {0}")]
    Unsupported(String),
    #[error("auth: missing key data")]
    MissingKey,
    #[error("auth: public and private keys don't match")]
    KeyMismatch,
    /// A key file that does not hold a key of the method's kind.
    #[error("{0}")]
    BadKey(String),
}

/// The token kinds etcd knows.
pub const SIMPLE: &str = "simple";
pub const JWT: &str = "jwt";

/// The options every JWT takes; others are ignored (etcd warns about them).
pub const JWT_OPTIONS: [&str; 4] = ["pub-key", "priv-key", "sign-method", "ttl"];

/// `spec` split as etcd splits it: the token kind, then `name=value` pairs (a pair without
/// exactly one `=`, or a name given twice, is refused).
pub fn decompose(spec: &str) -> Result<(String, BTreeMap<String, String>), OptionsError> {
    let mut parts = spec.split(',');
    let kind = parts.next().unwrap_or_default().to_owned();
    let mut options = BTreeMap::new();
    for part in parts {
        let pair: Vec<&str> = part.split('=').collect();
        let [name, value] = pair[..] else {
            return Err(OptionsError::Invalid(format!(
                "invalid token option {part:?}"
            )));
        };
        if options.insert(name.to_owned(), value.to_owned()).is_some() {
            return Err(OptionsError::Invalid(format!("{name:?} given twice")));
        }
    }
    match kind.as_str() {
        SIMPLE | JWT => Ok((kind, options)),
        _ => Err(OptionsError::Invalid(format!(
            "unknown token type {kind:?} (etcd's: simple, jwt)"
        ))),
    }
}

/// The contents of the key file at `path`.
pub(super) fn read_key(path: &Path) -> Result<Vec<u8>, OptionsError> {
    std::fs::read(path).map_err(|e| OptionsError::Invalid(format!("open {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_as_etcd_splits_them() {
        let (kind, options) = decompose("jwt,sign-method=RS256,ttl=10m").unwrap();
        assert_eq!(kind, "jwt");
        assert_eq!(options["sign-method"], "RS256");
        assert_eq!(options["ttl"], "10m");
        assert_eq!(decompose("simple").unwrap().0, "simple");
        for bad in [
            "jwt,priv-key",
            "jwt,a=b=c",
            "jwt,ttl=1s,ttl=2s",
            "opaque",
            "",
        ] {
            assert!(
                matches!(decompose(bad), Err(OptionsError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
