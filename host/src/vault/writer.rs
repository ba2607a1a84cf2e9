//! Stores new credentials in a vault, many rotations sharing one save (group
//! commit): a store waits until the vault is free, then hands it every store
//! queued meanwhile. The file vault writes them in one atomic rewrite, so a
//! pass over K due records costs far fewer than K rewrites; KSM sends one
//! update per record. Each store returns only once its fields are durable, so
//! `finalize` never runs before its key is saved (I1, I2).
//!
//! A file vault rewrites the whole file per save, so a new key's store waits
//! (at most `LINGER`, and only until its own change is saved) for the other
//! rotations of the pass to queue theirs: every rotation counts as under way
//! from the moment the pass takes it on (`rotating`), and a save goes ahead
//! once none is left, or `BATCH` stores are queued. While its store waits, a
//! rotation gives up its turn among `--jobs` (`rotation::turn`), so the next
//! ones reach their stores too: a pass then costs about K / `BATCH` rewrites.
//! The wait is bounded, so a plugin that hangs delays the others' stores by
//! `LINGER` at most, never by its own time limit. Markers and ledgers do not wait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

/// The longest a save waits for rotations under way to queue their stores.
const LINGER: Duration = Duration::from_secs(2);

/// The most rotation stores a save waits for: each waiting rotation keeps its
/// plugin instance, so this bounds a pass's memory as well as its rewrites.
pub const BATCH: usize = 64;

use crate::record::StoreField;
use crate::vault::{Change, Vault, VaultError};

/// A change waiting for the next save.
struct Queued {
    change: Change,
    /// Answered once saved; `None` for a marker nobody waits on.
    done: Option<oneshot::Sender<Result<(), Arc<VaultError>>>>,
}

/// What a change waits for before its save.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Waits {
    /// A rotation's store: the stores of rotations under way (bounded).
    ForOthers,
    /// A rotation's store that saves at once.
    No,
    /// A marker or ledger: nothing.
    Marker,
}

/// A locked vault shared by concurrent rotations.
pub struct VaultWriter {
    vault: tokio::sync::Mutex<Box<dyn Vault>>,
    queue: Mutex<Vec<Queued>>,
    /// How long saves wait for rotations under way: `LINGER` for a vault
    /// whose saves rewrite it whole (a file), none otherwise.
    linger: Option<Duration>,
    under_way: Arc<UnderWay>,
}

/// Rotations taken on whose store is not queued yet.
#[derive(Default)]
struct UnderWay {
    count: AtomicUsize,
    /// Woken when one of them queues its store or ends without one.
    progress: Notify,
}

/// A rotation under way, until its store is queued: saves wait for it
/// (bounded). Dropped without a store (a failed, dry or purge-only run), it
/// stops counting.
pub struct Rotating {
    under_way: Arc<UnderWay>,
}

impl Drop for Rotating {
    fn drop(&mut self) {
        self.under_way.count.fetch_sub(1, Ordering::SeqCst);
        self.under_way.progress.notify_waiters();
    }
}

impl VaultWriter {
    pub fn new(vault: Box<dyn Vault>) -> Self {
        Self {
            linger: vault.rewrites_whole().then_some(LINGER),
            vault: tokio::sync::Mutex::new(vault),
            queue: Mutex::new(Vec::new()),
            under_way: Arc::default(),
        }
    }

    /// This writer with saves lingering `linger` (tests: real time, no paused clock).
    #[cfg(test)]
    fn lingering(mut self, linger: Duration) -> Self {
        self.linger = Some(linger);
        self
    }

    /// Marks a rotation under way until its store is queued.
    pub fn rotating(&self) -> Rotating {
        self.under_way.count.fetch_add(1, Ordering::SeqCst);
        Rotating {
            under_way: self.under_way.clone(),
        }
    }

    /// Whether a store waits for others to share its save (a file vault).
    pub fn lingers(&self) -> bool {
        self.linger.is_some()
    }

    /// Stores a rotation's new credential: sets `fields` and removes the fields
    /// labelled `remove` on record `uid`, and returns once they are saved.
    /// `under_way` stops counting once the store is queued. With `wait`, the
    /// save first waits (bounded) for the stores of rotations under way.
    pub async fn store_rotation(
        &self,
        uid: &str,
        fields: Vec<StoreField>,
        remove: Vec<&'static str>,
        under_way: Rotating,
        wait: bool,
    ) -> Result<(), Arc<VaultError>> {
        let waits = if wait { Waits::ForOthers } else { Waits::No };
        self.submit(uid, fields, remove, waits, Some(under_way))
            .await
    }

    /// Like `store_rotation`, for fields that carry no credential (markers, ledgers).
    pub async fn store(
        &self,
        uid: &str,
        fields: Vec<StoreField>,
        remove: Vec<&'static str>,
    ) -> Result<(), Arc<VaultError>> {
        self.submit(uid, fields, remove, Waits::Marker, None).await
    }

    async fn submit(
        &self,
        uid: &str,
        fields: Vec<StoreField>,
        remove: Vec<&'static str>,
        waits: Waits,
        under_way: Option<Rotating>,
    ) -> Result<(), Arc<VaultError>> {
        let (done, result) = oneshot::channel();
        self.queue.lock().expect("queue lock").push(Queued {
            change: Change {
                uid: uid.to_string(),
                fields,
                remove,
                rotation: waits != Waits::Marker,
            },
            done: Some(done),
        });
        drop(under_way);
        let mut result = result;
        if waits == Waits::ForOthers {
            // Another store's save may write this one meanwhile: then it is done.
            tokio::select! {
                saved = &mut result => return saved.expect("every queued store is answered"),
                () = self.linger() => {}
            }
        }
        self.commit().await;
        result.await.expect("every queued store is answered")
    }

    /// Waits, at most `LINGER`, until no rotation is under way or `BATCH`
    /// stores are queued, so that their stores share this save.
    async fn linger(&self) {
        let Some(linger) = self.linger else {
            return;
        };
        let deadline = tokio::time::Instant::now() + linger;
        loop {
            let woken = self.under_way.progress.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.under_way.count.load(Ordering::SeqCst) == 0 || self.queued_stores() >= BATCH {
                return;
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return;
            }
        }
    }

    fn queued_stores(&self) -> usize {
        let queue = self.queue.lock().expect("queue lock");
        queue.iter().filter(|q| q.change.rotation).count()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Record, ValueKind};
    use crate::secret::Secret;
    use crate::vault::VaultOptions;
    use crate::vault::file::FileVault;

    /// The real file vault, its saves counted.
    struct Counted {
        inner: FileVault,
        saves: Arc<Mutex<Vec<usize>>>,
    }

    impl Vault for Counted {
        fn uids(&self) -> Vec<String> {
            self.inner.uids()
        }
        fn record(&self, uid: &str) -> Option<Record> {
            Vault::record(&self.inner, uid)
        }
        fn missing(&self) -> (String, &'static str) {
            self.inner.missing()
        }
        fn save(&mut self, batch: &[Change]) -> Vec<Result<(), Arc<VaultError>>> {
            self.saves.lock().unwrap().push(batch.len());
            self.inner.save(batch)
        }
        fn rewrites_whole(&self) -> bool {
            self.inner.rewrites_whole()
        }
    }

    fn writer(dir: &std::path::Path) -> (VaultWriter, Arc<Mutex<Vec<usize>>>) {
        let path = dir.join("vault.json");
        std::fs::write(
            &path,
            r#"{"records":[{"uid":"a","type":"pamUser"},{"uid":"b","type":"pamUser"}]}"#,
        )
        .unwrap();
        let saves = Arc::default();
        let inner = FileVault::open(&path, &VaultOptions::default()).unwrap();
        let vault = Counted {
            inner,
            saves: Arc::clone(&saves),
        };
        (VaultWriter::new(Box::new(vault)), saves)
    }

    fn key(value: &str) -> Vec<StoreField> {
        vec![StoreField {
            label: "k".into(),
            aliases: vec![],
            kind: ValueKind::Text,
            value: Secret::new(value),
        }]
    }

    /// A store waits for a rotation under way and shares its save.
    #[tokio::test]
    async fn a_store_shares_the_save_of_a_rotation_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let (w, saves) = writer(dir.path());
        let (first, second) = (w.rotating(), w.rotating());
        let a = w.store_rotation("a", key("1"), vec![], first, true);
        let b = w.store_rotation("b", key("2"), vec![], second, true);
        let (a, b) = tokio::join!(a, b);
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(*saves.lock().unwrap(), [2]);
    }

    /// A rotation that never stores holds a save back for the linger, then
    /// the save goes ahead alone.
    #[tokio::test]
    async fn a_save_waits_out_the_linger_for_a_rotation_that_never_stores() {
        let dir = tempfile::tempdir().unwrap();
        let (w, saves) = writer(dir.path());
        let linger = Duration::from_millis(300);
        let w = w.lingering(linger);
        let stuck = w.rotating();
        let mine = w.rotating();
        let started = tokio::time::Instant::now();
        w.store_rotation("a", key("1"), vec![], mine, true)
            .await
            .unwrap();
        assert!(started.elapsed() >= linger);
        assert_eq!(*saves.lock().unwrap(), [1]);
        drop(stuck);
    }

    /// With `BATCH` stores queued, a save stops waiting for the rest: with
    /// a linger of an hour, the stores end long before it would.
    #[tokio::test]
    async fn a_save_waits_for_no_more_than_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (w, saves) = writer(dir.path());
        let linger = Duration::from_secs(3600);
        let w = Arc::new(w.lingering(linger));
        let stuck = w.rotating();
        let started = tokio::time::Instant::now();
        let mut stores = tokio::task::JoinSet::new();
        for i in 0..BATCH {
            let (w, under_way) = (w.clone(), w.rotating());
            let uid = if i % 2 == 0 { "a" } else { "b" };
            stores.spawn(async move {
                w.store_rotation(uid, key(&i.to_string()), vec![], under_way, true)
                    .await
            });
        }
        // A save that waited out the linger would fail here, not hang the suite.
        let all = async {
            while let Some(stored) = stores.join_next().await {
                assert!(stored.unwrap().is_ok());
            }
        };
        tokio::time::timeout(Duration::from_secs(300), all)
            .await
            .expect("the batch's save did not wait for the stuck rotation");
        assert!(started.elapsed() < linger, "{:?}", started.elapsed());
        assert_eq!(*saves.lock().unwrap(), [BATCH]);
        drop(stuck);
    }
}
