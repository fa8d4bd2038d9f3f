//! `GroupRegistry`: the groups this node hosts, by id, for routing incoming messages.

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_types::GroupId;
use parking_lot::RwLock;

use crate::GroupEndpoint;

/// Local groups by id.
#[derive(Default)]
pub struct GroupRegistry {
    groups: RwLock<BTreeMap<GroupId, Arc<dyn GroupEndpoint>>>,
}

impl std::fmt::Debug for GroupRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupRegistry").field("groups", &self.groups.read().len()).finish()
    }
}

impl GroupRegistry {
    /// An empty registry.
    pub fn new() -> Arc<GroupRegistry> {
        Arc::new(GroupRegistry::default())
    }

    /// Registers `group`, replacing any previous endpoint of that id.
    pub fn insert(&self, group: GroupId, endpoint: Arc<dyn GroupEndpoint>) {
        self.groups.write().insert(group, endpoint);
    }

    /// Removes `group`.
    pub fn remove(&self, group: GroupId) -> Option<Arc<dyn GroupEndpoint>> {
        self.groups.write().remove(&group)
    }

    /// The endpoint of `group`, if hosted here.
    pub fn get(&self, group: GroupId) -> Option<Arc<dyn GroupEndpoint>> {
        self.groups.read().get(&group).cloned()
    }
}
