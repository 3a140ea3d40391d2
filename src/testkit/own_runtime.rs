//! A thread with a runtime of its own, for loads and samplers that must keep their pace
//! while the caller blocks (the lab's API is blocking; a test waits in loops).

use std::future::Future;
use std::thread::JoinHandle;

/// Runs the future `work` makes on a new thread's current-thread runtime; the thread
/// ends with its output, or `None` when no runtime could be built.
pub fn spawn_with_runtime<F, Fut>(work: F) -> JoinHandle<Option<Fut::Output>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future,
    Fut::Output: Send + 'static,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        Some(rt.block_on(work()))
    })
}
