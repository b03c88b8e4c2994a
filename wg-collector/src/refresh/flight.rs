//! Single flight: callers that ask for a fresh value while one is being made wait for the
//! next one and share it, so any number of concurrent callers costs at most one run going
//! and one waiting. A caller may also take a value that began recently enough.

use std::{
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

/// Runs of a producer, shared by the callers that ask at once.
pub struct SingleFlight<T> {
    state: Mutex<Flight<T>>,
    landed: Condvar,
}

/// Run numbers: the last one started, the last one done and what it made.
struct Flight<T> {
    started: u64,
    done: u64,
    running: bool,
    /// When the running run began.
    running_began: Option<Instant>,
    /// The last value and when its run began.
    last: Option<(Instant, Arc<T>)>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(Flight { started: 0, done: 0, running: false, running_began: None, last: None }),
            landed: Condvar::new(),
        }
    }
}

impl<T> SingleFlight<T> {
    /// A value whose run began after this call (`max_age` None), or at most `max_age` ago:
    /// the last one if it is young enough, else the one under way if it is, else a new one.
    /// `run` is called by at most one caller at a time.
    pub fn get(&self, max_age: Option<Duration>, run: impl FnOnce() -> T) -> Arc<T> {
        let mut f = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let young = |t: Instant| max_age.is_some_and(|a| t.elapsed() <= a);
        let want = match &f.last {
            Some((began, last)) if young(*began) => return last.clone(),
            _ if f.running && f.running_began.is_some_and(young) => f.started,
            _ => f.started + 1,
        };
        loop {
            if f.done >= want {
                if let Some((_, v)) = &f.last {
                    return v.clone();
                }
            }
            if !f.running {
                let began = Instant::now();
                f.running = true;
                f.running_began = Some(began);
                f.started += 1;
                let mut land = Land { flight: self, run: f.started, value: None };
                drop(f);
                let value = Arc::new(run());
                land.value = Some((began, value.clone()));
                return value;
            }
            f = self.landed.wait(f).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Ends a run, on unwind too, so a panicking run cannot wedge every caller.
struct Land<'a, T> {
    flight: &'a SingleFlight<T>,
    run: u64,
    value: Option<(Instant, Arc<T>)>,
}

impl<T> Drop for Land<'_, T> {
    fn drop(&mut self) {
        let mut f = self.flight.state.lock().unwrap_or_else(|e| e.into_inner());
        f.running = false;
        f.done = self.run;
        if let Some(v) = self.value.take() {
            f.last = Some(v);
        }
        self.flight.landed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicU64, Ordering},
            Barrier,
        },
        thread,
    };

    use super::*;

    #[test]
    fn each_call_alone_gets_a_new_run() {
        let f = SingleFlight::default();
        let runs = AtomicU64::new(0);
        let next = || runs.fetch_add(1, Ordering::SeqCst) + 1;
        assert_eq!(*f.get(None, next), 1);
        assert_eq!(*f.get(None, next), 2);
        // Young enough: the last one, no run.
        assert_eq!(*f.get(Some(Duration::from_secs(60)), next), 2);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        // Too old: a new run.
        thread::sleep(Duration::from_millis(5));
        assert_eq!(*f.get(Some(Duration::from_millis(1)), next), 3);
    }

    #[test]
    fn callers_during_a_run_share_the_next_one() {
        let f = SingleFlight::default();
        let runs = AtomicU64::new(0);
        let inside = Barrier::new(2);
        let release = Barrier::new(2);
        thread::scope(|s| {
            // The first run holds until the others are waiting.
            let first = s.spawn(|| {
                *f.get(None, || {
                    inside.wait();
                    release.wait();
                    runs.fetch_add(1, Ordering::SeqCst) + 1
                })
            });
            inside.wait();
            let waiters: Vec<_> =
                (0..8).map(|_| s.spawn(|| *f.get(None, || runs.fetch_add(1, Ordering::SeqCst) + 1))).collect();
            thread::sleep(Duration::from_millis(50));
            release.wait();
            assert_eq!(first.join().unwrap(), 1);
            // None of them takes the run that began before it asked; all share one more.
            let got: Vec<u64> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
            assert_eq!(got, vec![2; 8]);
        });
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_caller_that_accepts_age_shares_the_run_under_way() {
        let f = SingleFlight::default();
        let inside = Barrier::new(2);
        let release = Barrier::new(2);
        thread::scope(|s| {
            let first = s.spawn(|| {
                *f.get(None, || {
                    inside.wait();
                    release.wait();
                    1
                })
            });
            inside.wait();
            let second = s.spawn(|| *f.get(Some(Duration::from_secs(60)), || 2));
            thread::sleep(Duration::from_millis(50));
            release.wait();
            assert_eq!((first.join().unwrap(), second.join().unwrap()), (1, 1));
        });
    }

    #[test]
    fn a_panicking_run_does_not_wedge_the_others() {
        let f = SingleFlight::<u64>::default();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.get(None, || panic!("boom"))));
        assert!(r.is_err());
        assert_eq!(*f.get(None, || 7), 7);
    }
}
