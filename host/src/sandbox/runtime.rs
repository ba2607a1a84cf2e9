//! The async runtime a command runs the engine on.

use std::future::Future;
use std::thread;

/// Runs `future` to completion on a runtime of its own: the command-line
/// entry into the async engine. Blocking work still running at the end (an
/// HTTP request of a stopped plugin) is abandoned, not waited for.
pub fn block_on<F: Future>(future: F) -> F::Output {
    block_on_workers(1, future)
}

/// `block_on` with up to `jobs` worker threads (one per core at most), for
/// concurrent rotations.
pub fn block_on_workers<F: Future>(jobs: usize, future: F) -> F::Output {
    let workers = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, jobs.max(1));
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = builder
        .enable_all()
        .build()
        .expect("start the async runtime");
    let output = runtime.block_on(future);
    runtime.shutdown_background();
    output
}
