//! API key records. What a key may do is decided in `crate::auth`; this only stores them.

use super::{Store, StoreError, Txn, decode};
use crate::auth::ApiKeyRecord;

fn key_record_key(key_id: &str) -> Vec<u8> {
    [b"k/".as_slice(), key_id.as_bytes()].concat()
}

impl Txn<'_> {
    pub fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get_json(&key_record_key(key_id))
    }

    pub fn put_api_key(&mut self, record: &ApiKeyRecord) {
        self.put_json(key_record_key(&record.key_id), record);
    }
}

impl Store {
    pub fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get_json(&key_record_key(key_id))
    }

    pub fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.tree.scan_prefix(b"k/").map(|item| decode(&item?.1)).collect()
    }
}
