//! Foca custom broadcasts: load reports and "left" records.
//!
//! Foca owns its [`BroadcastHandler`] and offers no accessor to it, so the handler shares
//! its state with [`Membership`](crate::Membership) through an `Arc<Mutex<_>>`. The lock is
//! only ever taken from the thread driving the state machine (never contended); it exists
//! so that `Membership` stays `Send`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use foca::{BroadcastHandler, Invalidates};

use crate::id::{MAX_NAME_LEN, NodeId};
use crate::wire::{Item, decode_exact};

/// What the handler remembers, and what it accepted since `Membership` last looked.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Newest load-report version `(bump, seq)` seen per node name.
    pub load_versions: BTreeMap<String, (u32, u64)>,
    /// Highest incarnation known to have left gracefully, per node name.
    pub left: BTreeMap<String, u32>,
    /// Items accepted as new information, in arrival order.
    pub inbox: Vec<Item>,
}

/// Handle on [`Shared`].
#[derive(Clone, Debug, Default)]
pub(crate) struct SharedState(Arc<Mutex<Shared>>);

impl SharedState {
    /// Locks the state (a poisoned lock is recovered: the data is plain maps).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The foca broadcast handler.
pub(crate) struct Gossip(pub SharedState);

/// Identifies a broadcast item for foca's retransmission queue.
pub(crate) struct ItemKey {
    left: bool,
    name: String,
    version: (u32, u64),
}

impl Invalidates for ItemKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.left == other.left && self.name == other.name && self.version >= other.version
    }
}

/// A broadcast item that did not decode or is invalid.
#[derive(Debug, thiserror::Error)]
#[error("bad broadcast item: {0}")]
pub(crate) struct ItemError(String);

impl BroadcastHandler<NodeId> for Gossip {
    type Key = ItemKey;
    type Error = ItemError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeId>,
    ) -> Result<Option<ItemKey>, ItemError> {
        let item: Item = decode_exact(data).map_err(|e| ItemError(e.to_string()))?;
        let mut shared = self.0.lock();
        let key = match &item {
            Item::Load { name, bump, report } => {
                check(name)?;
                let version = (*bump, report.seq);
                match shared.load_versions.get(name) {
                    Some(known) if *known >= version => return Ok(None),
                    _ => {}
                }
                shared.load_versions.insert(name.clone(), version);
                ItemKey {
                    left: false,
                    name: name.clone(),
                    version,
                }
            }
            Item::Left { name, bump } => {
                check(name)?;
                match shared.left.get(name) {
                    Some(known) if *known >= *bump => return Ok(None),
                    _ => {}
                }
                shared.left.insert(name.clone(), *bump);
                ItemKey {
                    left: true,
                    name: name.clone(),
                    version: (*bump, 0),
                }
            }
        };
        shared.inbox.push(item);
        Ok(Some(key))
    }
}

fn check(name: &str) -> Result<(), ItemError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ItemError(format!("name of {} bytes", name.len())));
    }
    Ok(())
}
