//! Stores new credentials in a locked vault, many rotations sharing one
//! rewrite (group commit): a store waits until the vault is free, then writes
//! every store queued meanwhile in one atomic save. Each store returns only
//! once its fields are durable, so `finalize` never runs before its key is
//! saved (I1, I2), and a pass over K due records costs far fewer than K
//! rewrites.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::plugin::StoreField;
use crate::vault::{Vault, VaultError};

/// A change to write with the next save.
enum Change {
    Set {
        uid: String,
        fields: Vec<StoreField>,
        remove: Vec<&'static str>,
        done: oneshot::Sender<Result<(), Arc<VaultError>>>,
    },
    /// Written with the next save, whoever triggers it; nobody waits on it.
    Remove { uid: String, label: &'static str },
}

/// A locked vault shared by concurrent rotations.
pub struct VaultWriter {
    vault: tokio::sync::Mutex<Vault>,
    queue: Mutex<Vec<Change>>,
}

impl VaultWriter {
    pub fn new(vault: Vault) -> Self {
        Self {
            vault: tokio::sync::Mutex::new(vault),
            queue: Mutex::new(Vec::new()),
        }
    }

    /// Sets `fields` and removes the fields labelled `remove` on record `uid`,
    /// and returns once they are saved, with every other store queued meanwhile.
    pub async fn store(
        &self,
        uid: &str,
        fields: Vec<StoreField>,
        remove: Vec<&'static str>,
    ) -> Result<(), Arc<VaultError>> {
        let (done, result) = oneshot::channel();
        self.queue.lock().expect("queue lock").push(Change::Set {
            uid: uid.to_string(),
            fields,
            remove,
            done,
        });
        self.commit().await;
        result.await.expect("every queued store is answered")
    }

    /// Removes a field with the next save (for a marker whose work is done).
    pub fn remove_later(&self, uid: &str, label: &'static str) {
        self.queue.lock().expect("queue lock").push(Change::Remove {
            uid: uid.to_string(),
            label,
        });
    }

    /// Saves whatever is queued, if anything.
    pub async fn flush(&self) -> Result<(), Arc<VaultError>> {
        self.commit().await.unwrap_or(Ok(()))
    }

    /// Takes the vault, then writes everything queued in one save. The first
    /// store to get the vault writes the others' changes too.
    async fn commit(&self) -> Option<Result<(), Arc<VaultError>>> {
        let mut vault = self.vault.lock().await;
        let batch = std::mem::take(&mut *self.queue.lock().expect("queue lock"));
        if batch.is_empty() {
            return None;
        }
        let uids: Vec<&str> = batch
            .iter()
            .map(|c| match c {
                Change::Set { uid, .. } | Change::Remove { uid, .. } => uid.as_str(),
            })
            .collect();
        let undo = vault.undo_point(&uids);
        let mut applied = Vec::with_capacity(batch.len());
        for change in batch {
            match change {
                Change::Set {
                    uid,
                    fields,
                    remove,
                    done,
                } => {
                    let r = vault.set_fields(&uid, &fields).and_then(|()| {
                        remove
                            .iter()
                            .try_for_each(|label| vault.remove_field(&uid, label))
                    });
                    applied.push((done, r.map_err(Arc::new)));
                }
                Change::Remove { uid, label } => {
                    let _ = vault.remove_field(&uid, label);
                }
            }
        }
        let saved = vault.save().map_err(Arc::new);
        if saved.is_err() {
            vault.undo(undo);
        }
        tracing::debug!(
            stores = applied.len(),
            ok = saved.is_ok(),
            "vault group commit"
        );
        for (done, r) in applied {
            let _ = done.send(r.and(saved.clone()));
        }
        Some(saved)
    }
}
