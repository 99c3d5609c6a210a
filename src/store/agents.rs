//! The agent directory: addresses this node has granted keys for or received intents for.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, Txn, decode};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub address: String,
    pub status: String,
    pub display_name: Option<String>,
    pub created_at: String,
}

fn agent_key(address: &str) -> Vec<u8> {
    [b"a/".as_slice(), address.as_bytes()].concat()
}

impl Txn<'_> {
    /// Adds the address to the directory unless it is there already.
    pub fn register_agent(&mut self, address: &str, at: &str) -> Result<(), StoreError> {
        let key = agent_key(address);
        if self.get(&key)?.is_none() {
            let record = AgentRecord {
                address: address.to_owned(),
                status: "active".into(),
                display_name: None,
                created_at: at.to_owned(),
            };
            self.put_json(key, &record);
        }
        Ok(())
    }
}

impl Store {
    pub fn agent(&self, address: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.get_json(&agent_key(address))
    }

    /// Agents whose address starts with `prefix`, in address order.
    pub fn agents(&self, prefix: &str) -> Result<Vec<AgentRecord>, StoreError> {
        self.tree.scan_prefix(agent_key(prefix)).map(|item| decode(&item?.1)).collect()
    }
}
