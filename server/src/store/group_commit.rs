//! Group commit: concurrent writers share one durable commit.
//!
//! Each caller queues its request and then waits for the commit lock. The
//! first to get it takes every request queued so far, applies them all in
//! one write transaction, commits once (one fsync) and hands each caller its
//! own result; a caller whose request went out with someone else's commit
//! returns at once. Under load, the requests that arrive while a commit is
//! flushing form the next group, so the fsync cost is shared rather than
//! paid per request, and nobody is answered before their write is durable.

use std::sync::mpsc;
use std::sync::Mutex;

/// A queue of requests `R` answered with `T`, committed in groups.
pub(crate) struct GroupCommit<R, T> {
    queue: Mutex<Vec<(R, mpsc::SyncSender<T>)>>,
    commit: Mutex<()>,
}

impl<R, T> Default for GroupCommit<R, T> {
    fn default() -> Self {
        GroupCommit {
            queue: Mutex::new(Vec::new()),
            commit: Mutex::new(()),
        }
    }
}

impl<R, T> GroupCommit<R, T> {
    /// Queues `request` and returns its answer once it is committed.
    /// `apply` runs under the commit lock with every queued request, and
    /// must answer each of them, in order. `None`: the request went out
    /// with a commit whose `apply` panicked.
    pub(crate) fn submit(&self, request: R, apply: impl FnOnce(Vec<R>) -> Vec<T>) -> Option<T> {
        let (answer, answered) = mpsc::sync_channel(1);
        lock(&self.queue).push((request, answer));
        let _leader = lock(&self.commit);
        // The previous leader may have taken this request already.
        match answered.try_recv() {
            Ok(done) => return Some(done),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        let group = std::mem::take(&mut *lock(&self.queue));
        let (requests, answers): (Vec<R>, Vec<_>) = group.into_iter().unzip();
        let results = apply(requests);
        debug_assert_eq!(results.len(), answers.len());
        for (result, answer) in results.into_iter().zip(answers) {
            // The channel has room for one answer, and gets exactly one.
            let _ = answer.try_send(result);
        }
        // This request was in the group just committed.
        answered.try_recv().ok()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn every_request_gets_its_own_answer_and_groups_form_under_contention() {
        let group = Arc::new(GroupCommit::<u64, u64>::default());
        let commits = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16u64)
            .map(|t| {
                let (group, commits) = (group.clone(), commits.clone());
                std::thread::spawn(move || {
                    for i in 0..200u64 {
                        let request = t * 1000 + i;
                        let answer = group.submit(request, |requests| {
                            commits.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            requests.iter().map(|r| r * 2).collect()
                        });
                        assert_eq!(answer, Some(request * 2));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        // 3,200 requests; with 16 writers waiting on each commit, far fewer commits.
        assert!(commits.load(Ordering::Relaxed) < 3_200);
    }
}
