//! The highest registry serial this node has accepted per org: rollback protection that
//! survives restarts.

use super::{Store, StoreError, Txn};
use crate::registry::SerialMemory;

fn serial_key(org: &str) -> Vec<u8> {
    [b"r/".as_slice(), org.as_bytes()].concat()
}

fn decode(bytes: &[u8]) -> Result<u64, StoreError> {
    bytes.try_into().map(u64::from_be_bytes).map_err(|_| StoreError::Corrupt("registry serial is not 8 bytes".into()))
}

impl Txn<'_> {
    /// Remembers `serial` for `org` unless a higher one is already remembered.
    pub fn remember_serial(&mut self, org: &str, serial: u64) -> Result<(), StoreError> {
        let key = serial_key(org);
        let known = self.get(&key)?.map(|bytes| decode(&bytes)).transpose()?;
        if known.is_none_or(|known| serial > known) {
            self.put(key, serial.to_be_bytes().to_vec());
        }
        Ok(())
    }
}

impl Store {
    pub fn registry_serial(&self, org: &str) -> Result<Option<u64>, StoreError> {
        self.tree.get(serial_key(org))?.map(|bytes| decode(&bytes)).transpose()
    }
}

impl SerialMemory for Store {
    fn highest_serial(&self, org: &str) -> Option<u64> {
        match self.registry_serial(org) {
            Ok(serial) => serial,
            Err(error) => {
                // Unreadable memory must not let an old record back in: claim the highest serial.
                tracing::error!(%error, org, "cannot read the remembered registry serial; refusing the org's record");
                Some(u64::MAX)
            }
        }
    }
}
