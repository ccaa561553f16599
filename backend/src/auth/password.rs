//! Password hashes: bcrypt, as etcd stores them (`$2a$`, cost `--bcrypt-cost`, 10 by default),
//! so users move between etcd and Engram with their passwords. Hashing and checking take tens
//! of milliseconds of CPU by design: both run on the blocking pool.

/// etcd's default bcrypt cost.
pub const DEFAULT_COST: u32 = 10;

/// The bcrypt hash of `password`, as etcd writes it.
pub async fn hash(password: String, cost: u32) -> Result<Vec<u8>, bcrypt::BcryptError> {
    tokio::task::spawn_blocking(move || {
        bcrypt::hash_with_result(password, cost)
            .map(|parts| parts.format_for_version(bcrypt::Version::TwoA).into_bytes())
    })
    .await
    .unwrap_or(Err(bcrypt::BcryptError::InvalidHash(
        "hashing was cancelled",
    )))
}

/// Whether `password` matches the stored `hash` (false for a hash that cannot be read).
pub async fn matches(password: String, hash: Vec<u8>) -> bool {
    tokio::task::spawn_blocking(move || {
        std::str::from_utf8(&hash)
            .ok()
            .and_then(|hash| bcrypt::verify(password, hash).ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn hashes_as_etcd_and_checks() {
        let hash = super::hash("secret".into(), 4).await.unwrap();
        assert!(hash.starts_with(b"$2a$04$"));
        assert!(super::matches("secret".into(), hash.clone()).await);
        assert!(!super::matches("Secret".into(), hash).await);
        assert!(!super::matches("x".into(), b"not a hash".to_vec()).await);
    }
}
