//! Pure translation between Engram's write contract and TiKV transactions: a [`WriteBatch`]
//! becomes TiKV mutations, its [`Condition`]s are checked against the values the transaction
//! read, and tikv-client's errors are sorted into "a clean conflict, nothing written" and
//! everything else. Kept apart from the network code so that all of it is tested without a
//! cluster.

use super::keys;
use crate::engine::{Condition, EngineError, Mutation};
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};
use tikv_client::Error;
use tikv_client::transaction::Mutation as TikvMutation;

/// The batch's mutations as TiKV mutations under `prefix`, in batch order. The transaction
/// buffer keeps one entry per key, each mutation replacing the one before: the last mutation of
/// a key wins, as the contract says.
pub fn mutations(prefix: &[u8], batch: &[Mutation]) -> Vec<TikvMutation> {
    batch
        .iter()
        .map(|mutation| match mutation {
            Mutation::Put { key, value } => {
                TikvMutation::Put(keys::encode(prefix, key).into(), value.to_vec())
            }
            Mutation::Delete { key } => TikvMutation::Delete(keys::encode(prefix, key).into()),
        })
        .collect()
}

/// The TiKV keys the conditions read, each once, in key order.
pub fn condition_keys(prefix: &[u8], conditions: &[Condition]) -> Vec<Vec<u8>> {
    let unique: BTreeSet<Vec<u8>> = conditions
        .iter()
        .map(|condition| keys::encode(prefix, &condition.key))
        .collect();
    unique.into_iter().collect()
}

/// The first condition (in batch order) that does not hold, given the current values of the
/// condition keys (`current`: TiKV key → value; a key missing from it is absent).
pub fn failed_condition<'a>(
    prefix: &[u8],
    conditions: &'a [Condition],
    current: &HashMap<Vec<u8>, Vec<u8>>,
) -> Option<&'a Condition> {
    conditions.iter().find(|condition| {
        let value = current.get(&keys::encode(prefix, &condition.key));
        value.map(Vec::as_slice) != condition.expected.as_deref()
    })
}

/// What a failed TiKV transaction means for Engram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Another transaction won a race for a key of the batch (a write conflict at prewrite, or
    /// its lock was still held when our retries ran out). The transaction did not commit:
    /// nothing of the batch was written. `key` is the engine key TiKV named, if it named one
    /// under our prefix.
    Conflict { key: Option<Bytes> },
    /// TiKV may or may not have committed (an `UndeterminedError` anywhere in the error).
    Undetermined,
    /// Anything else: nothing was committed.
    Other,
}

/// Sorts a tikv-client error. A conflict counts only if nothing in the error says the outcome
/// is undetermined: an `UndeterminedError` may have committed, and must never be reported as
/// "nothing written".
pub fn classify(prefix: &[u8], err: &Error) -> Failure {
    let mut undetermined = false;
    let mut conflict: Option<Option<Bytes>> = None;
    visit_leaves(err, &mut undetermined, &mut |leaf| {
        if conflict.as_ref().is_some_and(Option::is_some) {
            return;
        }
        if let Some(key) = conflict_key(leaf) {
            let key = key.and_then(|k| keys::decode(prefix, k).map(Bytes::copy_from_slice));
            conflict = Some(key);
        }
    });
    match conflict {
        _ if undetermined => Failure::Undetermined,
        Some(key) => Failure::Conflict { key },
        None => Failure::Other,
    }
}

/// Walks the errors tikv-client nests (per region, per key) down to the single ones.
fn visit_leaves<'a>(err: &'a Error, undetermined: &mut bool, visit: &mut impl FnMut(&'a Error)) {
    match err {
        Error::ExtractedErrors(errors) | Error::MultipleKeyErrors(errors) => {
            for err in errors {
                visit_leaves(err, undetermined, visit);
            }
        }
        Error::PessimisticLockError { inner, .. } => visit_leaves(inner, undetermined, visit),
        Error::UndeterminedError(inner) => {
            *undetermined = true;
            visit_leaves(inner, undetermined, visit);
        }
        leaf => visit(leaf),
    }
}

/// `Some(key)` if `leaf` reports a lost race (with the TiKV key involved, when it names one).
fn conflict_key(leaf: &Error) -> Option<Option<&[u8]>> {
    match leaf {
        Error::KeyError(key_error) => {
            if let Some(conflict) = &key_error.conflict {
                return Some(Some(&conflict.key));
            }
            if let Some(lock) = &key_error.locked {
                return Some(Some(&lock.key));
            }
            if let Some(deadlock) = &key_error.deadlock {
                return Some(Some(&deadlock.lock_key));
            }
            // TiKV versions before the `conflict` field reported write conflicts as text.
            if key_error.retryable.contains("WriteConflict") {
                return Some(None);
            }
            None
        }
        Error::ResolveLockError(locks) => Some(locks.first().map(|lock| lock.key.as_slice())),
        _ => None,
    }
}

/// The engine error for a failed commit: a clean conflict becomes `ConditionFailed` (on the key
/// TiKV named, else on `fallback`: the batch's first condition or mutation key), an outcome
/// TiKV could not determine `Undetermined`, anything else `Storage`.
pub fn commit_error(prefix: &[u8], err: &Error, fallback: Bytes) -> EngineError {
    match classify(prefix, err) {
        Failure::Conflict { key } => EngineError::ConditionFailed {
            key: key.unwrap_or(fallback),
        },
        Failure::Undetermined => EngineError::Undetermined(format!("tikv commit: {err}")),
        Failure::Other => storage(err),
    }
}

/// A TiKV failure that is not a lost race.
pub fn storage(err: &Error) -> EngineError {
    EngineError::Storage(format!("tikv: {err}"))
}

/// gRPC status codes that mean "the message was too large": RESOURCE_EXHAUSTED (the server's
/// send limit) and OUT_OF_RANGE (tonic's decoding limit on this side).
pub fn is_too_large_code(code: i32) -> bool {
    code == 8 || code == 11
}

/// Whether a read failed because its response was too large for gRPC (the caller then reads a
/// smaller page).
pub fn is_response_too_large(err: &Error) -> bool {
    let mut too_large = false;
    let mut undetermined = false;
    visit_leaves(err, &mut undetermined, &mut |leaf| {
        if let Error::GrpcAPI(status) = leaf {
            too_large |= is_too_large_code(status.code() as i32);
        }
    });
    too_large
}

#[cfg(test)]
mod tests {
    use super::*;
    use tikv_client::{ProtoKeyError, ProtoLockInfo};

    fn condition(key: &str, expected: Option<&str>) -> Condition {
        Condition {
            key: Bytes::copy_from_slice(key.as_bytes()),
            expected: expected.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        }
    }

    fn write_conflict(key: &[u8]) -> Error {
        let mut key_error = ProtoKeyError::default();
        // tikv-client does not export the type by name; it is reached through the field.
        let conflict = key_error.conflict.insert(Default::default());
        conflict.key = key.to_vec();
        Error::KeyError(Box::new(key_error))
    }

    fn locked(key: &[u8]) -> Error {
        let lock = ProtoLockInfo {
            key: key.to_vec(),
            ..Default::default()
        };
        Error::KeyError(Box::new(ProtoKeyError {
            locked: Some(lock),
            ..Default::default()
        }))
    }

    #[test]
    fn mutations_keep_batch_order_under_the_prefix() {
        let batch = vec![
            Mutation::Put {
                key: Bytes::from_static(b"a\x00"),
                value: Bytes::from_static(b"1"),
            },
            Mutation::Delete {
                key: Bytes::from_static(b"a\x00"),
            },
            Mutation::Put {
                key: Bytes::from_static(b"\xff"),
                value: Bytes::new(),
            },
        ];
        assert_eq!(
            mutations(b"p/", &batch),
            vec![
                TikvMutation::Put(b"p/a\x00".to_vec().into(), b"1".to_vec()),
                TikvMutation::Delete(b"p/a\x00".to_vec().into()),
                TikvMutation::Put(b"p/\xff".to_vec().into(), Vec::new()),
            ]
        );
        assert!(mutations(b"p/", &[]).is_empty());
    }

    #[test]
    fn condition_keys_are_read_once_each() {
        let conditions = vec![
            condition("b", None),
            condition("a", Some("1")),
            condition("b", Some("2")),
        ];
        assert_eq!(
            condition_keys(b"p/", &conditions),
            vec![b"p/a".to_vec(), b"p/b".to_vec()]
        );
    }

    #[test]
    fn conditions_hold_only_on_the_exact_value() {
        let current: HashMap<Vec<u8>, Vec<u8>> = [
            (b"p/a".to_vec(), b"1".to_vec()),
            (b"p/empty".to_vec(), Vec::new()),
        ]
        .into_iter()
        .collect();
        fn holds<'a>(
            current: &HashMap<Vec<u8>, Vec<u8>>,
            conditions: &'a [Condition],
        ) -> Option<&'a Condition> {
            failed_condition(b"p/", conditions, current)
        }

        assert_eq!(holds(&current, &[]), None);
        assert_eq!(holds(&current, &[condition("a", Some("1"))]), None);
        assert_eq!(holds(&current, &[condition("missing", None)]), None);
        assert_eq!(holds(&current, &[condition("empty", Some(""))]), None);
        let stale = [condition("a", Some("1")), condition("a", Some("0"))];
        assert_eq!(holds(&current, &stale), Some(&stale[1]));
        let present = [condition("a", None)];
        assert_eq!(holds(&current, &present), Some(&present[0]));
        let absent = [condition("missing", Some(""))];
        assert_eq!(holds(&current, &absent), Some(&absent[0]));
        // Empty is a value, not absence.
        let empty = [condition("empty", None)];
        assert_eq!(holds(&current, &empty), Some(&empty[0]));
        // The first failing one in batch order is named.
        let two = [
            condition("missing", None),
            condition("empty", Some("x")),
            condition("a", Some("2")),
        ];
        assert_eq!(holds(&current, &two), Some(&two[1]));
        // The same key without the prefix is a different key.
        let current: HashMap<Vec<u8>, Vec<u8>> =
            [(b"a".to_vec(), b"1".to_vec())].into_iter().collect();
        let unprefixed = [condition("a", Some("1"))];
        assert_eq!(
            failed_condition(b"p/", &unprefixed, &current),
            Some(&unprefixed[0])
        );
    }

    #[test]
    fn write_conflicts_and_exhausted_locks_are_clean_conflicts() {
        let conflict = Failure::Conflict {
            key: Some(Bytes::from_static(b"k")),
        };
        assert_eq!(classify(b"p/", &write_conflict(b"p/k")), conflict);
        assert_eq!(classify(b"p/", &locked(b"p/k")), conflict);
        let lock = ProtoLockInfo {
            key: b"p/k".to_vec(),
            ..Default::default()
        };
        assert_eq!(
            classify(b"p/", &Error::ResolveLockError(vec![lock])),
            conflict
        );
        assert_eq!(
            classify(b"p/", &Error::ResolveLockError(vec![])),
            Failure::Conflict { key: None }
        );
        // Nested as prewrite reports them: per region, per key.
        let nested = Error::ExtractedErrors(vec![Error::MultipleKeyErrors(vec![
            Error::StringError("region busy".into()),
            write_conflict(b"p/k"),
        ])]);
        assert_eq!(classify(b"p/", &nested), conflict);
        // A key outside our prefix is not named.
        assert_eq!(
            classify(b"p/", &write_conflict(b"q/k")),
            Failure::Conflict { key: None }
        );
        let mut deadlock = ProtoKeyError::default();
        deadlock.deadlock.insert(Default::default()).lock_key = b"p/d".to_vec();
        assert_eq!(
            classify(b"p/", &Error::KeyError(Box::new(deadlock))),
            Failure::Conflict {
                key: Some(Bytes::from_static(b"d"))
            }
        );
        let legacy = ProtoKeyError {
            retryable: "WriteConflict: start_ts 5 conflict_ts 7".into(),
            ..Default::default()
        };
        assert_eq!(
            classify(b"p/", &Error::KeyError(Box::new(legacy))),
            Failure::Conflict { key: None }
        );
    }

    #[test]
    fn everything_else_is_a_storage_failure() {
        assert_eq!(
            classify(b"p/", &Error::StringError("boom".into())),
            Failure::Other
        );
        assert_eq!(classify(b"p/", &Error::OnePcFailure), Failure::Other);
        let abort = ProtoKeyError {
            abort: "TxnLockNotFound".into(),
            ..Default::default()
        };
        assert_eq!(
            classify(b"p/", &Error::KeyError(Box::new(abort))),
            Failure::Other
        );
        assert_eq!(
            classify(b"p/", &Error::MultipleKeyErrors(vec![])),
            Failure::Other
        );
        // Undetermined: it may have committed, even if a conflict is mentioned inside.
        let undetermined = Error::UndeterminedError(Box::new(write_conflict(b"p/k")));
        assert_eq!(classify(b"p/", &undetermined), Failure::Undetermined);
        let nested = Error::ExtractedErrors(vec![
            write_conflict(b"p/k"),
            Error::UndeterminedError(Box::new(Error::StringError("lost".into()))),
        ]);
        assert_eq!(classify(b"p/", &nested), Failure::Undetermined);
    }

    #[test]
    fn commit_errors_become_engine_errors() {
        let fallback = Bytes::from_static(b"first");
        match commit_error(b"p/", &write_conflict(b"p/k"), fallback.clone()) {
            EngineError::ConditionFailed { key } => assert_eq!(key, Bytes::from_static(b"k")),
            other => panic!("{other:?}"),
        }
        match commit_error(b"p/", &Error::ResolveLockError(vec![]), fallback.clone()) {
            EngineError::ConditionFailed { key } => assert_eq!(key, fallback),
            other => panic!("{other:?}"),
        }
        match commit_error(b"p/", &Error::StringError("boom".into()), fallback.clone()) {
            EngineError::Storage(message) => assert_eq!(message, "tikv: boom"),
            other => panic!("{other:?}"),
        }
        let lost = Error::UndeterminedError(Box::new(Error::StringError("lost".into())));
        assert!(matches!(
            commit_error(b"p/", &lost, fallback),
            EngineError::Undetermined(_)
        ));
    }

    #[test]
    fn too_large_codes() {
        assert!(is_too_large_code(8));
        assert!(is_too_large_code(11));
        assert!(!is_too_large_code(0));
        assert!(!is_too_large_code(14));
        assert!(!is_response_too_large(&Error::StringError("x".into())));
    }
}
