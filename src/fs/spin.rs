//! Idle polling while requests are flowing (`-o spin=DURATION`).
//!
//! A FUSE round trip is two wakeups: the daemon's thread blocked on /dev/fuse, then the
//! caller blocked on the reply. When the CPU a thread is woken on has gone idle, a virtual
//! machine halts that vCPU and the wakeup costs tens of microseconds (measured here: ~6 µs
//! per 4 KiB round trip on one vCPU, 65-90 µs across two). The `Spinner` is one thread at
//! `SCHED_IDLE` priority that spins for `window` after each request, so the CPU it runs on
//! stays awake between requests; any runnable thread preempts it at once, so it only uses
//! time the CPU would otherwise spend idle. With no request for `window` it sleeps until the
//! next one (that request pays one futex wake).
//!
//! When: `spin=auto` (the default) polls only while the daemon is confined to a subset of the
//! online CPUs (taskset, a cpuset) *and* the latest client of a read or write cannot run on
//! any of them: those CPUs were set aside for the daemon, and polling there takes time from
//! no one. Measured here (4 KiB direct reads, fio on cpu 0): daemon on cpu 1, 1.7x the IOPS
//! without polling; daemon and fio sharing cpu 0, polling made it 0.76x (every switch
//! between fio and the daemon's thread went through the polling thread); unconfined, polling
//! made it 0.6-0.7x (the polling thread holds a CPU the scheduler would otherwise wake a
//! request thread on). The client's affinity is looked at every `RECHECK` while polling and
//! at every wake-up otherwise. `spin=DURATION` polls always, `spin=0` never.
//!
//! Invariant: `asleep` is true only while the thread is (about to be) blocked on `cv`; a
//! request that sees it set (while `polling`) wakes the thread.

pub use crate::options::SpinMode;
use crate::sys::sched::{self, CpuSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How often `spin=auto` looks again at the CPUs while it polls.
const RECHECK: Duration = Duration::from_millis(100);

pub struct Spinner {
    requests: AtomicU64,
    /// The thread id of the latest client of a read or write (0: none yet).
    client: AtomicU32,
    asleep: AtomicBool,
    /// Whether the thread currently polls (so requests should wake it).
    polling: AtomicBool,
    stop: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
    mode: SpinMode,
}

impl Spinner {
    /// A spinner with no thread yet.
    fn new(mode: SpinMode) -> Spinner {
        Spinner {
            requests: AtomicU64::new(0),
            client: AtomicU32::new(0),
            asleep: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            mode,
        }
    }

    /// Start the polling thread (not for `SpinMode::Off`).
    pub fn start(mode: SpinMode) -> std::io::Result<Arc<Spinner>> {
        let s = Arc::new(Spinner::new(mode));
        let t = s.clone();
        std::thread::Builder::new()
            .name("spin".into())
            .spawn(move || t.run())?;
        Ok(s)
    }

    /// A request arrived (called on every request, so: nothing while not polling, else one
    /// atomic add, and a wake only after an idle period).
    #[inline]
    pub fn note_request(&self) {
        if !self.polling.load(Ordering::Relaxed) {
            return;
        }
        // SeqCst here and around the sleep: a store then a load on each side (Dekker), so
        // either the request sees `asleep` or the spinner sees the new count.
        self.requests.fetch_add(1, Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst) {
            let _g = self.lock.lock().unwrap();
            self.cv.notify_one();
        }
    }

    /// The thread `tid` sent a read or write (a load, and a store only when the client
    /// changes).
    #[inline]
    pub fn note_client(&self, tid: u32) {
        if matches!(self.mode, SpinMode::Auto(_)) && self.client.load(Ordering::Relaxed) != tid {
            self.client.store(tid, Ordering::Relaxed);
        }
    }

    /// The polling window now, if any.
    fn window(&self) -> Option<Duration> {
        match self.mode {
            SpinMode::Always(w) => Some(w),
            SpinMode::Auto(w) => {
                let tid = self.client.load(Ordering::Relaxed);
                if tid == 0 {
                    return None;
                }
                let own = sched::affinity(0)?;
                let client = sched::affinity(tid)?;
                // -1 when unknown, which confined treats as such.
                let online = sched::online_cpus();
                (confined(&own, online) && disjoint(&own, &client)).then_some(w)
            }
            SpinMode::Off => None,
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _g = self.lock.lock().unwrap();
        self.cv.notify_one();
    }

    fn run(&self) {
        if let Err(e) = sched::set_idle_scheduling() {
            tracing::warn!("spin: cannot run at SCHED_IDLE ({e}); not polling");
            return;
        }
        while !self.stop.load(Ordering::Relaxed) {
            let window = self.window();
            self.polling.store(window.is_some(), Ordering::Relaxed);
            // Spin while requests keep coming (and auto's conditions hold).
            let mut seen = self.requests.load(Ordering::Relaxed);
            if let Some(window) = window {
                let mut last = Instant::now();
                let mut checked = last;
                while last.elapsed() < window {
                    std::hint::spin_loop();
                    let now = self.requests.load(Ordering::Relaxed);
                    if now != seen {
                        seen = now;
                        last = Instant::now();
                        if last.duration_since(checked) >= RECHECK {
                            checked = last;
                            if self.window().is_none() {
                                break;
                            }
                        }
                    }
                }
            }
            // Quiet (or not polling): sleep until the next request, or a second (to look at
            // the CPU affinity again).
            let g = self.lock.lock().unwrap();
            self.asleep.store(true, Ordering::SeqCst);
            let g = if self.requests.load(Ordering::SeqCst) == seen
                && !self.stop.load(Ordering::Relaxed)
            {
                self.cv.wait_timeout(g, Duration::from_secs(1)).unwrap().0
            } else {
                g
            };
            self.asleep.store(false, Ordering::SeqCst);
            drop(g);
        }
    }
}

/// Whether `set` holds fewer CPUs than the `online` ones.
fn confined(set: &CpuSet, online: libc::c_long) -> bool {
    online > 0 && (set.count() as libc::c_long) < online
}

/// Whether no CPU is in both sets.
fn disjoint(a: &CpuSet, b: &CpuSet) -> bool {
    (0..CpuSet::MAX_CPU).all(|c| !(a.is_set(c) && b.is_set(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_when_quiet_and_wakes_on_a_request() {
        let s = Spinner::start(SpinMode::Always(Duration::from_millis(5))).unwrap();
        let t0 = Instant::now();
        while !s.asleep.load(Ordering::Acquire) {
            assert!(t0.elapsed() < Duration::from_secs(5), "never went to sleep");
            std::thread::sleep(Duration::from_millis(1));
        }
        s.note_request();
        let t0 = Instant::now();
        while s.asleep.load(Ordering::Acquire) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "not woken by a request"
            );
            std::thread::yield_now();
        }
        s.stop();
    }

    fn cpus(list: &[usize]) -> CpuSet {
        let mut set = CpuSet::new();
        for &c in list {
            set.set(c);
        }
        set
    }

    #[test]
    fn confined_and_disjoint_sets() {
        assert!(confined(&cpus(&[1]), 2));
        assert!(!confined(&cpus(&[0, 1]), 2));
        assert!(!confined(&cpus(&[0]), 1));
        assert!(disjoint(&cpus(&[1]), &cpus(&[0])));
        assert!(disjoint(&cpus(&[1, 3]), &cpus(&[0, 2])));
        assert!(!disjoint(&cpus(&[0]), &cpus(&[0])));
        assert!(!disjoint(&cpus(&[1]), &cpus(&[0, 1])));
    }

    #[test]
    fn auto_polls_only_for_a_client_that_cannot_share_the_cpus() {
        let online = sched::online_cpus();
        let pin = |c: usize| sched::set_affinity(&cpus(&[c])).unwrap();
        let gettid = sched::gettid;
        let s = Spinner::new(SpinMode::Auto(Duration::from_millis(1)));
        // The client: a thread pinned to cpu 0, kept alive while the checks run.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let client = std::thread::spawn(move || {
            pin(0);
            tx.send(gettid()).unwrap();
            done_rx.recv().ok();
        });
        s.note_client(rx.recv().unwrap());
        std::thread::scope(|sc| {
            // Daemon thread on cpu 0, as the client: no polling.
            sc.spawn(|| {
                pin(0);
                assert_eq!(s.window(), None);
            });
        });
        if online > 1 {
            // Daemon thread on cpu 1, the client on cpu 0: polling.
            std::thread::scope(|sc| {
                sc.spawn(|| {
                    pin(1);
                    assert_eq!(s.window(), Some(Duration::from_millis(1)));
                });
            });
        }
        done_tx.send(()).unwrap();
        client.join().unwrap();
        // The client is gone: no polling.
        std::thread::scope(|sc| {
            sc.spawn(|| {
                pin(online as usize - 1);
                assert_eq!(s.window(), None);
            });
        });
    }
}
