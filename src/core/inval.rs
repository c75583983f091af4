//! Dropping the kernel's cached pages after a direct write (`cache=kernel`), on a thread of
//! its own: [`PageDropper`].
//!
//! The kernel locks each page to drop it (and waits for a page under writeback), and a page
//! can be locked by a read, or be under a writeback, that waits for an answer from this
//! daemon. So the calls that may block are made where blocking cannot stop the daemon:
//!
//! * **inline**, in the writer's own request thread, while at least one other request thread
//!   is not making such a call (`request threads - 1` permits): that thread is free to answer
//!   the read the kernel waits for, so the call ends. This is the common case and costs one
//!   system call;
//! * else by one long-lived **worker**, in queue order: the writer queues its range and waits
//!   for it only up to a bound, then answers anyway (the worker finishes later).
//!
//! A thread spawned per write, as before, cost about 40 µs per 4 KiB direct write (four times
//! the write itself); a hand-off to the worker on the same CPU, about 20 µs.
//!
//! Invariants: tickets are handed out and completed in queue order, so "completed >= my
//! ticket" means my range was dropped; at most `request threads - 1` inline calls run at
//! once; the worker ends when the dropper is dropped.

use super::KernelCache;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One page range to drop: (node, offset, length).
type Range = (u64, u64, u64);

#[derive(Default)]
struct Queue {
    pending: VecDeque<Range>,
    /// Ranges queued so far (the last ticket handed out).
    queued: u64,
    /// Ranges dropped so far, in queue order.
    completed: u64,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// The worker waits here for work.
    work: Condvar,
    /// Writers wait here for their range.
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The worker and its queue. Dropping it ends the worker (after the call it is in, if any).
pub(crate) struct PageDropper {
    shared: Arc<Shared>,
    kernel: Arc<dyn KernelCache>,
    /// Inline calls that may still start now (request threads - 1 at rest).
    inline_permits: AtomicUsize,
}

impl PageDropper {
    /// Start the worker; pages are dropped through `kernel`, for a daemon serving requests
    /// with `request_threads` threads.
    pub(crate) fn start(
        kernel: Arc<dyn KernelCache>,
        request_threads: usize,
    ) -> std::io::Result<PageDropper> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let k = kernel.clone();
        std::thread::Builder::new()
            .name("inval".into())
            .spawn(move || worker(&s, k.as_ref()))?;
        Ok(PageDropper {
            shared,
            kernel,
            inline_permits: AtomicUsize::new(request_threads.saturating_sub(1)),
        })
    }

    /// Drop the kernel's pages of `[off, off + len)` of `ino`, from a request thread: inline
    /// when another request thread is free, else through the worker, waiting up to `wait`.
    /// False if the wait ran out (the range is still dropped, later).
    pub(crate) fn drop_pages(&self, ino: u64, off: u64, len: u64, wait: Duration) -> bool {
        let inline = self
            .inline_permits
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if inline {
            if let Err(e) = self.kernel.inval_inode(ino, off as i64, len as i64) {
                tracing::debug!("invalidating the kernel's pages of node {ino}: {e}");
            }
            self.inline_permits.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        let mut q = self.shared.lock();
        q.pending.push_back((ino, off, len));
        q.queued += 1;
        let ticket = q.queued;
        self.shared.work.notify_one();
        let deadline = Instant::now() + wait;
        while q.completed < ticket {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            q = self
                .shared
                .done
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

impl Drop for PageDropper {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_one();
    }
}

fn worker(s: &Shared, kernel: &dyn KernelCache) {
    let mut q = s.lock();
    loop {
        let Some((ino, off, len)) = q.pending.pop_front() else {
            if q.stop {
                return;
            }
            q = s.work.wait(q).unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        drop(q);
        if let Err(e) = kernel.inval_inode(ino, off as i64, len as i64) {
            tracing::debug!("invalidating the kernel's pages of node {ino}: {e}");
        }
        q = s.lock();
        q.completed += 1;
        s.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records calls and the thread that made each; blocks while `gate` is held.
    struct Recorder {
        calls: Mutex<Vec<(u64, i64, i64)>>,
        threads: Mutex<Vec<String>>,
        gate: Mutex<()>,
    }

    impl KernelCache for Recorder {
        fn inval_inode(&self, ino: u64, off: i64, len: i64) -> std::io::Result<()> {
            let name = std::thread::current().name().unwrap_or("?").to_string();
            self.threads.lock().unwrap().push(name);
            let _g = self.gate.lock().unwrap();
            self.calls.lock().unwrap().push((ino, off, len));
            Ok(())
        }
    }

    fn recorder() -> Arc<Recorder> {
        Arc::new(Recorder {
            calls: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            gate: Mutex::new(()),
        })
    }

    #[test]
    fn a_writer_drops_inline_while_another_request_thread_is_free() {
        let r = recorder();
        let d = Arc::new(PageDropper::start(r.clone(), 2).unwrap());
        let d2 = d.clone();
        std::thread::Builder::new()
            .name("request-0".into())
            .spawn(move || assert!(d2.drop_pages(3, 0, 4096, Duration::from_secs(10))))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(*r.threads.lock().unwrap(), vec!["request-0".to_string()]);
        assert_eq!(
            d.inline_permits.load(Ordering::Acquire),
            1,
            "permit given back"
        );
    }

    #[test]
    fn with_the_permit_taken_a_writer_goes_through_the_worker() {
        let r = recorder();
        let d = Arc::new(PageDropper::start(r.clone(), 2).unwrap());
        let gate = r.gate.lock().unwrap();
        let d2 = d.clone();
        // The first writer's inline call blocks (a locked page) and holds the one permit.
        let first = std::thread::spawn(move || d2.drop_pages(1, 0, 4096, Duration::from_secs(10)));
        while d.inline_permits.load(Ordering::Acquire) != 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The second cannot block too (nobody would be left to answer the kernel): it queues
        // for the worker, which blocks in turn, and the bounded wait runs out.
        assert!(!d.drop_pages(1, 4096, 4096, Duration::from_millis(50)));
        drop(gate);
        assert!(first.join().unwrap());
        // The permit is free again: this one goes inline and may finish before the worker's
        // queued call does, which then lands on its own.
        assert!(d.drop_pages(1, 8192, 4096, Duration::from_secs(10)));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while r.calls.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut calls = r.calls.lock().unwrap().clone();
        calls.sort();
        assert_eq!(calls, vec![(1, 0, 4096), (1, 4096, 4096), (1, 8192, 4096)]);
        assert!(r.threads.lock().unwrap().contains(&"inval".to_string()));
    }

    #[test]
    fn each_range_is_dropped_before_its_writer_goes_on() {
        let r = recorder();
        let d = PageDropper::start(r.clone(), 1).unwrap();
        for i in 0..100u64 {
            assert!(d.drop_pages(7, i * 4096, 4096, Duration::from_secs(10)));
            assert_eq!(r.calls.lock().unwrap().len() as u64, i + 1);
        }
        assert_eq!(r.calls.lock().unwrap()[99], (7, 99 * 4096, 4096));
    }

    #[test]
    fn a_blocked_call_bounds_the_wait_and_finishes_later() {
        let r = recorder();
        let d = PageDropper::start(r.clone(), 1).unwrap();
        let gate = r.gate.lock().unwrap();
        // The kernel call blocks (a locked page): the writer gives up after its bound.
        assert!(!d.drop_pages(1, 0, 4096, Duration::from_millis(50)));
        assert!(!d.drop_pages(1, 4096, 4096, Duration::from_millis(50)));
        drop(gate);
        // Once unblocked, the queue drains in order, the late ranges included.
        assert!(d.drop_pages(1, 8192, 4096, Duration::from_secs(10)));
        assert_eq!(
            *r.calls.lock().unwrap(),
            vec![(1, 0, 4096), (1, 4096, 4096), (1, 8192, 4096)]
        );
    }

    #[test]
    fn concurrent_writers_all_get_their_range_dropped() {
        let r = recorder();
        let d = Arc::new(PageDropper::start(r.clone(), 1).unwrap());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let d = d.clone();
                std::thread::spawn(move || {
                    for i in 0..50u64 {
                        assert!(d.drop_pages(t, i, 1, Duration::from_secs(10)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut calls = r.calls.lock().unwrap().clone();
        calls.sort();
        let want: Vec<_> = (0..4u64)
            .flat_map(|t| (0..50i64).map(move |i| (t, i, 1)))
            .collect();
        assert_eq!(calls, want);
    }
}
