//! Stores new credentials in a vault, many rotations sharing one save (group
//! commit): a store waits until the vault is free, then hands it every store
//! queued meanwhile. The file vault writes them in one atomic rewrite, so a
//! pass over K due records costs far fewer than K rewrites; KSM sends one
//! update per record. Each store returns only once its fields are durable, so
//! `finalize` never runs before its key is saved (I1, I2).

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::record::StoreField;
use crate::vault::{Change, Vault, VaultError};

/// A change waiting for the next save.
struct Queued {
    change: Change,
    /// Answered once saved; `None` for a marker nobody waits on.
    done: Option<oneshot::Sender<Result<(), Arc<VaultError>>>>,
}

/// A locked vault shared by concurrent rotations.
pub struct VaultWriter {
    vault: tokio::sync::Mutex<Box<dyn Vault>>,
    queue: Mutex<Vec<Queued>>,
}

impl VaultWriter {
    pub fn new(vault: Box<dyn Vault>) -> Self {
        Self {
            vault: tokio::sync::Mutex::new(vault),
            queue: Mutex::new(Vec::new()),
        }
    }

    /// Stores a rotation's new credential: sets `fields` and removes the fields
    /// labelled `remove` on record `uid`, and returns once they are saved.
    pub async fn store_rotation(
        &self,
        uid: &str,
        fields: Vec<StoreField>,
        remove: Vec<&'static str>,
    ) -> Result<(), Arc<VaultError>> {
        self.submit(uid, fields, remove, true).await
    }

    /// Like `store_rotation`, for fields that carry no credential (markers, ledgers).
    pub async fn store(
        &self,
        uid: &str,
        fields: Vec<StoreField>,
        remove: Vec<&'static str>,
    ) -> Result<(), Arc<VaultError>> {
        self.submit(uid, fields, remove, false).await
    }

    async fn submit(
        &self,
        uid: &str,
        fields: Vec<StoreField>,
        remove: Vec<&'static str>,
        rotation: bool,
    ) -> Result<(), Arc<VaultError>> {
        let (done, result) = oneshot::channel();
        self.queue.lock().expect("queue lock").push(Queued {
            change: Change {
                uid: uid.to_string(),
                fields,
                remove,
                rotation,
            },
            done: Some(done),
        });
        self.commit().await;
        result.await.expect("every queued store is answered")
    }

    /// `Vault::lease` for record `uid`; returns it read again if one was written.
    pub async fn lease(
        &self,
        uid: &str,
        lease: &crate::vault::lease::Lease,
    ) -> Result<Option<crate::record::Record>, VaultError> {
        let mut vault = self.vault.lock().await;
        if vault.lease(uid, lease)? {
            return vault
                .named(
                    uid,
                    "the rotation lease",
                    Some(crate::fields::PAM_USER_TYPE),
                )
                .map(Some);
        }
        Ok(None)
    }

    /// `Vault::check_lease`: is `uid` free of other writers' live leases?
    pub async fn check_lease(&self, uid: &str) -> Result<(), VaultError> {
        self.vault.lock().await.check_lease(uid)
    }

    /// `Vault::release`: gives the lease on `uid` back.
    pub async fn release(
        &self,
        uid: &str,
        lease: &crate::vault::lease::Lease,
    ) -> Result<(), VaultError> {
        self.vault.lock().await.release(uid, lease)
    }

    /// Removes a field with the next save (for a marker whose work is done).
    pub fn remove_later(&self, uid: &str, label: &'static str) {
        self.queue.lock().expect("queue lock").push(Queued {
            change: Change {
                uid: uid.to_string(),
                fields: vec![],
                remove: vec![label],
                rotation: false,
            },
            done: None,
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
        let (changes, waiters): (Vec<Change>, Vec<_>) =
            batch.into_iter().map(|q| (q.change, q.done)).unzip();
        let results = vault.save(&changes);
        let failed = results.iter().find_map(|r| r.as_ref().err().cloned());
        tracing::debug!(
            stores = changes.len(),
            ok = failed.is_none(),
            "vault group commit"
        );
        for (done, r) in waiters.into_iter().zip(results) {
            if let Some(done) = done {
                let _ = done.send(r);
            }
        }
        Some(failed.map_or(Ok(()), Err))
    }
}
