//! A rotation's turn among its plugin's `--jobs`: held for the plugin calls,
//! given up while its store waits for a shared save (`vault::writer`), so
//! the next rotations reach their stores too and one rewrite of a file vault
//! serves many.
//!
//! A waiting rotation keeps its instance, so the instances waiting aside may
//! together hold no more memory than `jobs` instances at their limit: a
//! plugin's instances never hold more than twice `jobs × memory-mib`, however
//! many of its records are due. A rotation that finds no room saves without
//! waiting for others.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

/// The gates of one plugin's rotations in a pass.
pub struct Slots {
    /// Rotations begun and not finished, so a rotation back from waiting
    /// queues for its turn behind a bounded number of others.
    admitted: Arc<Semaphore>,
    /// Rotations in a plugin call.
    turns: Arc<Semaphore>,
    /// KiB of instance memory that waiting rotations may hold.
    waiting_kib: Semaphore,
}

impl Slots {
    /// `jobs` turns, room for `waiting` more rotations to wait for a save,
    /// and for `jobs` instances' worth of `memory_bytes` among those.
    pub fn new(jobs: usize, waiting: usize, memory_bytes: usize) -> Self {
        Self {
            admitted: Arc::new(Semaphore::new(jobs + waiting)),
            turns: Arc::new(Semaphore::new(jobs)),
            waiting_kib: Semaphore::new(kib(jobs.saturating_mul(memory_bytes))),
        }
    }

    /// Waits until a rotation may begin, then for its first turn.
    pub async fn begin(&self) -> Turn<'_> {
        let admitted = self.admitted.clone().acquire_owned().await;
        Turn {
            held: Mutex::new(Some(take(&self.turns).await)),
            slots: self,
            _admitted: admitted.expect(OPEN),
        }
    }
}

/// One rotation's place: admitted until dropped, with a turn except while
/// it waits aside.
pub struct Turn<'a> {
    slots: &'a Slots,
    held: Mutex<Option<OwnedSemaphorePermit>>,
    _admitted: OwnedSemaphorePermit,
}

const OPEN: &str = "the pass never closes its semaphores";

async fn take(turns: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    turns.clone().acquire_owned().await.expect(OPEN)
}

/// Bytes to whole KiB, rounded up, at least 1 (every instance costs some).
fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024).clamp(1, Semaphore::MAX_PERMITS)
}

/// Room for one instance to wait aside, taken from its plugin's share.
pub struct Room<'t, 'a> {
    turn: &'t Turn<'a>,
    _memory: SemaphorePermit<'a>,
}

impl<'a> Turn<'a> {
    /// Room to wait aside for an instance holding `memory_bytes`, if the
    /// plugin's waiting instances have that much left.
    pub fn room(&self, memory_bytes: usize) -> Option<Room<'_, 'a>> {
        let need = u32::try_from(kib(memory_bytes)).ok()?;
        let memory = self.slots.waiting_kib.try_acquire_many(need).ok()?;
        Some(Room {
            turn: self,
            _memory: memory,
        })
    }
}

impl Room<'_, '_> {
    /// Runs `wait` without the turn, then waits for a turn again: behind
    /// rotations already admitted only, so that wait is bounded too. The
    /// room is given back once the turn is.
    pub async fn aside<T>(self, wait: impl Future<Output = T>) -> T {
        let turns = &self.turn.slots.turns;
        drop(self.turn.held.lock().expect("turn lock").take());
        let out = wait.await;
        let again = take(turns).await;
        *self.turn.held.lock().expect("turn lock") = Some(again);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While one rotation waits aside, another takes the only turn; the
    /// waiting one comes back once it is free.
    #[tokio::test]
    async fn a_rotation_aside_lets_another_take_its_turn() {
        let slots = Slots::new(1, 1, 1 << 20);
        let first = slots.begin().await;
        let (saved, save) = tokio::sync::oneshot::channel::<()>();
        let waiting = first
            .room(1 << 20)
            .unwrap()
            .aside(async { save.await.ok() });
        let other = async {
            let second = slots.begin().await;
            assert_eq!(slots.turns.available_permits(), 0);
            saved.send(()).unwrap();
            drop(second);
        };
        let (back, ()) = tokio::join!(waiting, other);
        assert_eq!(back, Some(()));
        assert_eq!(
            slots.turns.available_permits(),
            0,
            "the first has its turn again"
        );
        drop(first);
        assert_eq!(slots.turns.available_permits(), 1);
        assert_eq!(slots.admitted.available_permits(), 2);
    }

    /// Admission bounds the rotations begun: a third waits while two are.
    #[tokio::test]
    async fn no_more_rotations_begin_than_jobs_and_waiting() {
        let slots = Slots::new(1, 1, 1 << 20);
        let first = slots.begin().await;
        let parked = first.room(1).unwrap().aside(std::future::pending::<()>());
        tokio::pin!(parked);
        assert!(futures_poll(&mut parked).await.is_none());
        let _second = slots.begin().await;
        let third = slots.begin();
        tokio::pin!(third);
        assert!(futures_poll(&mut third).await.is_none(), "a third began");
    }

    /// Waiting instances share `jobs` instances' worth of memory: while two
    /// halves wait, a third instance finds no room; once one is back, its
    /// room is free again.
    #[tokio::test]
    async fn waiting_instances_hold_at_most_jobs_times_the_memory_limit() {
        let slots = Slots::new(1, 8, 1 << 20);
        let a = slots.begin().await;
        let (release_a, wait_a) = tokio::sync::oneshot::channel::<()>();
        let mut parked_a = Box::pin(a.room(512 << 10).unwrap().aside(wait_a));
        assert!(futures_poll(&mut parked_a).await.is_none());
        let b = slots.begin().await;
        let parked_b = b
            .room(512 << 10)
            .unwrap()
            .aside(std::future::pending::<()>());
        tokio::pin!(parked_b);
        assert!(futures_poll(&mut parked_b).await.is_none());
        let c = slots.begin().await;
        assert!(c.room(1).is_none(), "a third instance found room");
        release_a.send(()).unwrap();
        drop(c);
        assert!(
            futures_poll(&mut parked_a).await.is_some(),
            "a has its turn"
        );
        drop(parked_a);
        assert!(a.room(512 << 10).is_some(), "a's room was given back");
    }

    /// Polls `f` once.
    async fn futures_poll<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
