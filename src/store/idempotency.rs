//! Idempotency records: the first answer to a keyed request, kept at least for the TTL.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Store, StoreError, Txn, decode};

/// Who asked, where, under which key: `(caller identity, endpoint, Idempotency-Key)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyScope([u8; 32]);

impl IdempotencyScope {
    pub fn new(caller: &str, endpoint: &str, key: &str) -> Self {
        let mut hasher = Sha256::new();
        for part in [caller, endpoint, key] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        IdempotencyScope(hasher.finalize().into())
    }
}

/// SHA-256 of a request body in canonical form (keys sorted, no whitespace).
pub fn canonical_hash(body: &Value) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(body).expect("JSON values serialise")))
}

#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyCheck {
    /// No live record: run the request.
    Fresh,
    /// Same key, same body: answer this again.
    Replay(Value),
    /// Same key, another body.
    Conflict,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    body_hash: String,
    response: Value,
    created_ms: u64,
}

fn entry_key(scope: IdempotencyScope) -> Vec<u8> {
    [b"d/".as_slice(), &scope.0].concat()
}

fn expiry_key(created_ms: u64, scope: IdempotencyScope) -> Vec<u8> {
    [b"D/".as_slice(), &created_ms.to_be_bytes(), &scope.0].concat()
}

impl Txn<'_> {
    pub fn idempotency_check(
        &self,
        scope: IdempotencyScope,
        body_hash: &str,
        expired_before_ms: u64,
    ) -> Result<IdempotencyCheck, StoreError> {
        Ok(match self.get_json::<Entry>(&entry_key(scope))? {
            Some(entry) if entry.created_ms >= expired_before_ms => {
                if entry.body_hash == body_hash {
                    IdempotencyCheck::Replay(entry.response)
                } else {
                    IdempotencyCheck::Conflict
                }
            }
            _ => IdempotencyCheck::Fresh,
        })
    }

    pub fn idempotency_save(&mut self, scope: IdempotencyScope, body_hash: &str, response: &Value, now_ms: u64) {
        let entry = Entry { body_hash: body_hash.to_owned(), response: response.clone(), created_ms: now_ms };
        self.put_json(entry_key(scope), &entry);
        self.put(expiry_key(now_ms, scope), Vec::new());
    }

    /// Drops one expired record, unless the key was used again since.
    pub fn idempotency_forget(&mut self, expired: ExpiredRecord) -> Result<(), StoreError> {
        self.remove(expiry_key(expired.created_ms, expired.scope));
        if let Some(entry) = self.get_json::<Entry>(&entry_key(expired.scope))?
            && entry.created_ms == expired.created_ms
        {
            self.remove(entry_key(expired.scope));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ExpiredRecord {
    scope: IdempotencyScope,
    created_ms: u64,
}

impl Store {
    /// Records created before `before_ms`, oldest first, at most `limit`.
    pub fn idempotency_expired(&self, before_ms: u64, limit: usize) -> Result<Vec<ExpiredRecord>, StoreError> {
        let end = [b"D/".as_slice(), &before_ms.to_be_bytes()].concat();
        self.tree
            .range(b"D/".to_vec()..end)
            .take(limit)
            .map(|item| {
                let (key, _) = item?;
                let created_ms =
                    u64::from_be_bytes(key[2..10].try_into().map_err(|_| StoreError::Corrupt("expiry key".into()))?);
                let scope =
                    IdempotencyScope(key[10..].try_into().map_err(|_| StoreError::Corrupt("expiry key".into()))?);
                Ok(ExpiredRecord { scope, created_ms })
            })
            .collect()
    }

    pub fn idempotency_record_exists(&self, scope: IdempotencyScope) -> Result<bool, StoreError> {
        Ok(self.tree.get(entry_key(scope))?.map(|bytes| decode::<Entry>(&bytes)).transpose()?.is_some())
    }
}
