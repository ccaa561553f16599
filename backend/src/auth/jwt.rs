//! JWT tokens, as etcd issues and checks them under `--auth-token jwt,pub-key=<file>,
//! priv-key=<file>,sign-method=<alg>,ttl=<duration>` (etcd's `server/auth/jwt.go` and
//! `options.go`).
//!
//! A token is a JWT signed with the configured method whose claims are `username`, `revision`
//! (the auth revision it was issued at) and `exp` (issued + ttl, in seconds). Nothing about a
//! token is remembered: any member started with the same key accepts it, which is what a brain
//! cluster needs. A member given only the public key verifies tokens but cannot issue them
//! (etcd's verify-only mode: `Authenticate` fails). The revision claim is what invalidates a
//! token when users or roles change: the caller's checks refuse a token older than the auth
//! revision (see `server/src/auth_info.rs`), as etcd's do.

use super::error::AuthError;
use super::options::{OptionsError, read_key};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// etcd's default `ttl` of a JWT.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// Verified tokens kept before expired ones are dropped (a check of a token seen before is a
/// map lookup instead of a signature verification, which costs tens of microseconds).
const CACHE_PRUNE_AT: usize = 4096;

/// What a valid token says: who, and at which auth revision it was issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtCaller {
    pub user: String,
    pub revision: u64,
}

/// The claims etcd puts in a token, in the order Go's JSON encoder writes a map's keys.
#[derive(serde::Serialize)]
struct IssuedClaims<'a> {
    exp: u64,
    revision: u64,
    username: &'a str,
}

/// The claims a token must carry to be accepted (etcd reads `revision` as a JSON number).
#[derive(serde::Deserialize)]
struct Claims {
    username: String,
    revision: f64,
    exp: Option<f64>,
}

/// Issues and checks JWTs with one key.
pub struct JwtTokens {
    algorithm: Algorithm,
    /// None: only a public key was given (verify-only).
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    validation: Validation,
    ttl: Duration,
    /// Token → who it names and when it expires (seconds since the epoch), once verified.
    verified: Mutex<HashMap<String, (JwtCaller, Option<f64>)>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The algorithm etcd's `sign-method` names (golang-jwt's names).
fn algorithm(method: &str) -> Result<Algorithm, OptionsError> {
    Ok(match method {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        // etcd signs ES512 with P-521, which neither jsonwebtoken nor aws-lc-rs's ECDSA
        // signer in it offers.
        "ES512" => return Err(OptionsError::Unsupported(method.into())),
        // golang-jwt's "none" method exists, but etcd finds no key type for it.
        "none" => return Err(OptionsError::Unsupported(method.into())),
        _ => return Err(OptionsError::InvalidMethod),
    })
}

/// An EC private key in PKCS#8, as jsonwebtoken takes it: SEC1 keys (`EC PRIVATE KEY`, what
/// `openssl ecparam -genkey` writes and etcd accepts) are wrapped for `algorithm`'s curve.
fn ec_private_key(pem: &[u8], algorithm: Algorithm) -> Result<EncodingKey, String> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    match PrivateKeyDer::from_pem_slice(pem).map_err(|e| e.to_string())? {
        PrivateKeyDer::Pkcs8(der) => Ok(EncodingKey::from_ec_der(der.secret_pkcs8_der())),
        PrivateKeyDer::Sec1(der) => {
            // id-ecPublicKey, then the curve: prime256v1 or secp384r1.
            const EC_PUBLIC_KEY: &[u8] = &[6, 7, 0x2a, 0x86, 0x48, 0xce, 0x3d, 2, 1];
            let curve: &[u8] = match algorithm {
                Algorithm::ES256 => &[6, 8, 0x2a, 0x86, 0x48, 0xce, 0x3d, 3, 1, 7],
                _ => &[6, 5, 0x2b, 0x81, 4, 0, 0x22],
            };
            let identifier = der_tlv(0x30, &[EC_PUBLIC_KEY, curve].concat());
            let version = [2, 1, 0];
            let key = der_tlv(4, der.secret_sec1_der());
            let pkcs8 = der_tlv(0x30, &[&version[..], &identifier, &key].concat());
            Ok(EncodingKey::from_ec_der(&pkcs8))
        }
        _ => Err("not an EC private key".into()),
    }
}

fn bad_key(what: &str, reason: impl std::fmt::Display) -> OptionsError {
    OptionsError::BadKey(format!("{what}: {reason}"))
}

/// One DER element: `tag`, the length of `content`, `content`.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

impl JwtTokens {
    /// Reads the keys etcd's JWT options name (`pub-key`, `priv-key`, `sign-method`, `ttl`),
    /// refusing what etcd refuses: an unknown method, no key, a key of the wrong kind, or
    /// keys that do not match.
    pub fn from_options(options: &BTreeMap<String, String>) -> Result<Self, OptionsError> {
        let ttl = match options.get("ttl").filter(|t| !t.is_empty()) {
            Some(text) => go_duration(text)
                .ok_or_else(|| OptionsError::Invalid(format!("time: invalid duration {text:?}")))?,
            None => DEFAULT_TTL,
        };
        let file = |name: &str| -> Result<Option<Vec<u8>>, OptionsError> {
            match options.get(name).filter(|p| !p.is_empty()) {
                Some(path) => read_key(Path::new(path)).map(Some),
                None => Ok(None),
            }
        };
        let (public, private) = (file("pub-key")?, file("priv-key")?);
        let method = options.get("sign-method").map(String::as_str);
        let algorithm = algorithm(method.unwrap_or_default())?;
        let hmac = matches!(
            algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        );
        let ec = matches!(algorithm, Algorithm::ES256 | Algorithm::ES384);
        // HMAC: the private key file's bytes are the shared secret; pub-key is not used.
        let signing = match &private {
            Some(key) if hmac => {
                Some(EncodingKey::from_secret(key).map_err(|e| bad_key("priv-key", e))?)
            }
            Some(key) if ec => {
                Some(ec_private_key(key, algorithm).map_err(|e| bad_key("priv-key", e))?)
            }
            Some(key) => Some(EncodingKey::from_rsa_pem(key).map_err(|e| bad_key("priv-key", e))?),
            None => None,
        };
        let given_public = match &public {
            _ if hmac => None,
            Some(key) if ec => Some(DecodingKey::from_ec_pem(key)),
            Some(key) => Some(DecodingKey::from_rsa_pem(key)),
            None => None,
        }
        .transpose()
        .map_err(|e| bad_key("pub-key", e))?;
        let verifying = match (&signing, given_public) {
            (None, None) => return Err(OptionsError::MissingKey),
            (_, Some(public)) => public,
            (Some(signing), None) if hmac => {
                DecodingKey::from_secret(signing.as_bytes()).map_err(|e| bad_key("priv-key", e))?
            }
            (Some(signing), None) => Jwk::from_encoding_key(signing, algorithm)
                .and_then(|jwk| DecodingKey::from_jwk(&jwk))
                .map_err(|e| bad_key("priv-key", e))?,
        };
        let mut validation = Validation::new(algorithm);
        // As golang-jwt: `exp` is checked to the second when present, not required; no
        // audience is expected; `nbf` is honoured.
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        validation.validate_nbf = true;
        let tokens = JwtTokens {
            algorithm,
            signing,
            verifying,
            validation,
            ttl,
            verified: Mutex::new(HashMap::new()),
        };
        tokens.probe()?;
        Ok(tokens)
    }

    /// Signs and verifies one token, so that a key that cannot sign, or a public key that is
    /// not the private key's, fails at startup rather than at the first `Authenticate`.
    fn probe(&self) -> Result<(), OptionsError> {
        if self.signing.is_none() {
            return Ok(());
        }
        let token = self
            .sign("probe", 1)
            .map_err(|e| OptionsError::BadKey(format!("priv-key: {e}")))?;
        match self.verify(&token) {
            Some(_) => Ok(()),
            None => Err(OptionsError::KeyMismatch),
        }
    }

    /// Whether this member can issue tokens (it has the private key).
    pub fn can_sign(&self) -> bool {
        self.signing.is_some()
    }

    fn sign(&self, user: &str, revision: u64) -> Result<String, jsonwebtoken::errors::Error> {
        let Some(key) = &self.signing else {
            return Err(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat.into());
        };
        let claims = IssuedClaims {
            exp: now_secs() + self.ttl.as_secs(),
            revision,
            username: user,
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
    }

    /// A token for `user` at auth revision `revision` (etcd's `assign`).
    pub fn issue(&self, user: &str, revision: u64) -> Result<String, AuthError> {
        if self.signing.is_none() {
            return Err(AuthError::VerifyOnly);
        }
        self.sign(user, revision).map_err(|err| {
            tracing::warn!(%err, "signing a JWT failed");
            AuthError::InvalidAuthToken
        })
    }

    /// Who `token` names, if its signature, method and expiry are valid now.
    pub fn check(&self, token: &str) -> Option<JwtCaller> {
        let now = now_secs() as f64;
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((caller, exp)) = verified.get(token) {
            if exp.is_none_or(|exp| now <= exp) {
                return Some(caller.clone());
            }
            verified.remove(token);
            return None;
        }
        drop(verified);
        let (caller, exp) = self.verify(token)?;
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= CACHE_PRUNE_AT {
            verified.retain(|_, (_, exp)| exp.is_none_or(|exp| now <= exp));
            if verified.len() >= CACHE_PRUNE_AT {
                verified.clear();
            }
        }
        verified.insert(token.to_owned(), (caller.clone(), exp));
        Some(caller)
    }

    fn verify(&self, token: &str) -> Option<(JwtCaller, Option<f64>)> {
        match jsonwebtoken::decode::<Claims>(token, &self.verifying, &self.validation) {
            Ok(data) => {
                let Claims {
                    username,
                    revision,
                    exp,
                } = data.claims;
                let caller = JwtCaller {
                    user: username,
                    // etcd converts the JSON number as Go's uint64(float64) does.
                    revision: revision as u64,
                };
                Some((caller, exp))
            }
            Err(err) => {
                tracing::debug!(%err, "invalid JWT");
                None
            }
        }
    }
}

/// A duration as Go's `time.ParseDuration` reads it: `300s`, `5m`, `1h30m`, `1.5h`, `500ms`.
fn go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit..];
        total += value * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> String {
        format!("{}/testdata/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn tokens(options: &[(&str, &str)]) -> Result<JwtTokens, OptionsError> {
        let options = options
            .iter()
            .map(|(k, v)| {
                let v = if k.ends_with("-key") {
                    key(v)
                } else {
                    v.to_string()
                };
                (k.to_string(), v)
            })
            .collect();
        JwtTokens::from_options(&options)
    }

    fn parts(token: &str) -> (serde_json::Value, serde_json::Value) {
        let decode = |part: &str| {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        };
        let mut it = token.split('.');
        (decode(it.next().unwrap()), decode(it.next().unwrap()))
    }

    #[test]
    fn every_method_signs_what_it_verifies_with_etcds_claims() {
        let cases: &[&[(&str, &str)]] = &[
            &[
                ("sign-method", "RS256"),
                ("priv-key", "rsa.pem"),
                ("pub-key", "rsa.pub"),
            ],
            &[("sign-method", "RS512"), ("priv-key", "rsa.pem")],
            &[("sign-method", "PS384"), ("priv-key", "rsa.pem")],
            &[
                ("sign-method", "ES256"),
                ("priv-key", "ec.pem"),
                ("pub-key", "ec.pub"),
            ],
            &[("sign-method", "ES256"), ("priv-key", "ec-pkcs8.pem")],
            &[("sign-method", "ES384"), ("priv-key", "ec384.pem")],
            &[("sign-method", "HS256"), ("priv-key", "hmac.key")],
        ];
        for options in cases {
            let jwt = tokens(options).unwrap_or_else(|e| panic!("{options:?}: {e}"));
            let token = jwt.issue("alice", 7).unwrap();
            let (header, claims) = parts(&token);
            assert_eq!(header["alg"], options[0].1);
            assert_eq!(header["typ"], "JWT");
            let names: Vec<&String> = claims.as_object().unwrap().keys().collect();
            assert_eq!(names, ["exp", "revision", "username"]);
            let expected = JwtCaller {
                user: "alice".into(),
                revision: 7,
            };
            assert_eq!(jwt.check(&token), Some(expected.clone()), "{options:?}");
            // The second check is answered from what the first verified.
            assert_eq!(jwt.check(&token), Some(expected));
            assert_eq!(jwt.check(&format!("{token}x")), None);
        }
    }

    #[test]
    fn a_public_key_alone_verifies_but_cannot_issue() {
        let signer = tokens(&[("sign-method", "RS256"), ("priv-key", "rsa.pem")]).unwrap();
        let verifier = tokens(&[("sign-method", "RS256"), ("pub-key", "rsa.pub")]).unwrap();
        assert!(!verifier.can_sign());
        assert_eq!(verifier.issue("alice", 2), Err(AuthError::VerifyOnly));
        let token = signer.issue("alice", 2).unwrap();
        assert_eq!(
            verifier.check(&token).map(|c| c.user).as_deref(),
            Some("alice")
        );
        // Another method of the same key is refused, as etcd refuses it.
        let ps = tokens(&[("sign-method", "PS256"), ("pub-key", "rsa.pub")]).unwrap();
        assert_eq!(ps.check(&token), None);
    }

    #[test]
    fn an_expired_token_is_refused() {
        let jwt = tokens(&[
            ("sign-method", "HS256"),
            ("priv-key", "hmac.key"),
            ("ttl", "1s"),
        ]);
        let jwt = jwt.unwrap();
        let token = jwt.issue("alice", 2).unwrap();
        assert!(jwt.check(&token).is_some());
        // exp is in whole seconds and valid through its own second.
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(jwt.check(&token), None);
    }

    #[test]
    fn bad_options_are_refused_with_etcds_errors() {
        let err = |options: &[(&str, &str)]| tokens(options).err().unwrap();
        assert_eq!(err(&[("priv-key", "rsa.pem")]), OptionsError::InvalidMethod);
        assert_eq!(err(&[("sign-method", "XX1")]), OptionsError::InvalidMethod);
        assert_eq!(err(&[("sign-method", "RS256")]), OptionsError::MissingKey);
        assert_eq!(err(&[("sign-method", "HS256")]), OptionsError::MissingKey);
        assert_eq!(
            err(&[
                ("sign-method", "RS256"),
                ("priv-key", "rsa.pem"),
                ("pub-key", "other-rsa.pub")
            ]),
            OptionsError::KeyMismatch
        );
        assert!(matches!(
            err(&[("sign-method", "ES256"), ("priv-key", "rsa.pem")]),
            OptionsError::BadKey(_)
        ));
        assert!(matches!(
            err(&[("sign-method", "RS256"), ("priv-key", "ec.pem")]),
            OptionsError::BadKey(_)
        ));
        assert!(matches!(
            err(&[("sign-method", "RS256"), ("priv-key", "missing.pem")]),
            OptionsError::Invalid(_)
        ));
        assert!(matches!(
            err(&[
                ("sign-method", "RS256"),
                ("priv-key", "rsa.pem"),
                ("ttl", "abc")
            ]),
            OptionsError::Invalid(_)
        ));
        assert!(matches!(
            err(&[("sign-method", "ES512"), ("priv-key", "ec.pem")]),
            OptionsError::Unsupported(_)
        ));
    }

    #[test]
    fn durations_parse_as_go_parses_them() {
        assert_eq!(go_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        assert_eq!(go_duration("10"), None);
        assert_eq!(go_duration("abc"), None);
        assert_eq!(go_duration("5d"), None);
    }
}
