//! A persistent worker pool for `lpc_rt_parallel_for`: threads are started
//! once per loaded model and wait for work (spinning briefly, then parked on
//! a condition variable), so a parallel loop costs a wake-up, not a thread
//! spawn. The caller works on the first chunk itself.

use crate::BodyFn;
use std::ffi::c_void;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Estimated work (about cycles) each thread of a parallel loop should get
/// at least: posting a job to a spinning worker and joining it cost about
/// a microsecond, so a loop with less work than this per thread runs on
/// fewer threads (one: the caller alone). Measured on the fixtures with 2
/// threads (MXFP4, medians of 1500-3000 runs, 5-6 processes each): at
/// 20 000 their 4-9 µs GEMMs and attention ran on one thread (Qwen3
/// prefill 0.087 ms, HiF4 0.100, as on 1 thread); at 4 000 they split
/// (0.078-0.085, HiF4 0.082-0.088), decode is unchanged (0.016-0.017) and
/// Wan 0.071-0.073 (both builds alternating in one process: 72.7 -> 68.2
/// µs, genai 82.6 -> 69.9); at 2 500 decode was slower (0.018).
pub const MIN_TASK_COST: i64 = 4_000;

/// One parallel loop. Its counters belong to it: a worker still leaving
/// an old job can never take a chunk of the next one.
#[derive(Clone)]
struct Job {
    body: BodyFn,
    env: usize,
    n: i64,
    chunk: i64,
    /// Chunks handed out, and chunks not finished.
    next: Arc<AtomicI64>,
    remaining: Arc<AtomicI64>,
    /// Workers that may still join: a loop runs on at most the threads
    /// its cost asks for, however finely it is chunked.
    seats: Arc<AtomicI64>,
}

struct Shared {
    /// Bumped for every job; workers compare it with the last one they ran.
    epoch: AtomicU64,
    job: Mutex<Option<Job>>,
    wake: Condvar,
    done: Mutex<()>,
    done_cv: Condvar,
    shutdown: AtomicU64,
    /// Workers parked on `wake` (changed under the `job` lock): the
    /// submitter wakes them only when there are some, so a job posted
    /// while they spin costs no system call.
    sleepers: AtomicU64,
    /// The submitter is parked on `done_cv`: only then does the worker
    /// that finishes the last chunk take the lock and notify.
    waiting: AtomicU64,
    /// Bumped by each worker whenever it sees a new epoch (see
    /// [`Pool::wake`]).
    seen: AtomicU64,
}

/// The pool; `threads - 1` workers plus the calling thread.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({} threads)", self.threads)
    }
}

const SPIN: Duration = Duration::from_micros(200);
/// The longest [`Pool::wake`] waits for the workers.
const WAKE_TIMEOUT: Duration = Duration::from_millis(100);
/// Chunks per thread of a loop posted to parked workers (see `Pool::run`);
/// otherwise one contiguous chunk per thread.
const SLEEPER_SPLIT: i64 = 8;

/// Runs chunk `c` of `job` and counts it done.
fn run_chunk(s: &Shared, job: &Job, c: i64) {
    let lo = c * job.chunk;
    let hi = (lo + job.chunk).min(job.n);
    // SAFETY: the generated body accepts any sub-range of [0, n), and
    // ranges handed out here are disjoint.
    unsafe { (job.body)(job.env as *mut c_void, lo, hi) };
    // SeqCst pairs with the submitter's store of `waiting` and load of
    // `remaining`: one of the two sees the other's write.
    if job.remaining.fetch_sub(1, Ordering::SeqCst) == 1 && s.waiting.load(Ordering::SeqCst) != 0 {
        let _g = s.done.lock().unwrap_or_else(|e| e.into_inner());
        s.done_cv.notify_all();
    }
}

fn run_chunks(s: &Shared, job: &Job) {
    let chunks = (job.n + job.chunk - 1) / job.chunk;
    loop {
        let c = job.next.fetch_add(1, Ordering::AcqRel);
        if c >= chunks {
            break;
        }
        run_chunk(s, job, c);
    }
}

fn worker(s: Arc<Shared>) {
    let mut seen = 0u64;
    loop {
        // Spin a little for the next job, then park.
        let t = Instant::now();
        let mut e = s.epoch.load(Ordering::Acquire);
        while e == seen && t.elapsed() < SPIN && s.shutdown.load(Ordering::Acquire) == 0 {
            std::hint::spin_loop();
            e = s.epoch.load(Ordering::Acquire);
        }
        if e == seen {
            let mut g = s.job.lock().unwrap_or_else(|e| e.into_inner());
            while s.epoch.load(Ordering::Acquire) == seen && s.shutdown.load(Ordering::Acquire) == 0
            {
                s.sleepers.fetch_add(1, Ordering::Relaxed);
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if s.shutdown.load(Ordering::Acquire) != 0 {
            return;
        }
        seen = s.epoch.load(Ordering::Acquire);
        s.seen.fetch_add(1, Ordering::AcqRel);
        let job = s.job.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(job) = job {
            if job.seats.fetch_sub(1, Ordering::AcqRel) > 0 {
                run_chunks(&s, &job);
            }
        }
    }
}

impl Pool {
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            wake: Condvar::new(),
            done: Mutex::new(()),
            done_cv: Condvar::new(),
            shutdown: AtomicU64::new(0),
            sleepers: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            seen: AtomicU64::new(0),
        });
        let workers = (1..threads)
            .filter_map(|_| {
                let s = shared.clone();
                // Generated kernels keep per-row scratch (attention scores)
                // on the stack. A worker that cannot start leaves its chunks
                // to the others.
                std::thread::Builder::new()
                    .name("lpc-worker".into())
                    .stack_size(16 << 20)
                    .spawn(move || worker(s))
                    .ok()
            })
            .collect();
        Self {
            shared,
            workers,
            threads,
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Wakes the workers and returns once each has seen the wake-up or a
    /// loop's epoch since the call began (either way it is awake; then they
    /// spin for [`SPIN`] before parking again, as after a loop), or
    /// after [`WAKE_TIMEOUT`]: a loop posted meanwhile starts on every
    /// thread at once instead of waiting for parked ones (tens of
    /// microseconds each on a busy host). Not concurrently with
    /// [`Pool::run`] (one caller per pool).
    pub fn wake(&self) {
        let s = &self.shared;
        let n = self.workers.len() as u64;
        if n == 0 {
            return;
        }
        let before = s.seen.load(Ordering::Acquire);
        {
            let mut g = s.job.lock().unwrap_or_else(|e| e.into_inner());
            // No job: the workers go straight back to spinning.
            *g = None;
            s.epoch.fetch_add(1, Ordering::AcqRel);
            if s.sleepers.load(Ordering::Relaxed) > 0 {
                s.wake.notify_all();
            }
        }
        let t0 = Instant::now();
        while s.seen.load(Ordering::Acquire).wrapping_sub(before) < n && t0.elapsed() < WAKE_TIMEOUT
        {
            std::hint::spin_loop();
        }
    }

    /// Runs `body` over `[0, n)` in contiguous chunks, one per thread (more
    /// when workers are parked), and returns when all are done; the caller
    /// runs the first chunk. `cost` estimates the work per index (about
    /// cycles; 0: unknown): a loop gets at most one thread per
    /// [`MIN_TASK_COST`] of work.
    ///
    /// # Safety
    /// `body(env, lo, hi)` must be sound for every sub-range of `[0, n)`,
    /// concurrently on disjoint ranges.
    pub unsafe fn run(&self, n: i64, cost: i64, body: BodyFn, env: *mut c_void) {
        if n <= 0 {
            return;
        }
        let t = (self.threads as i64).min(n).min(if cost > 0 {
            (n.saturating_mul(cost) / MIN_TASK_COST).max(1)
        } else {
            i64::MAX
        });
        let chunk = (n + t - 1) / t;
        if t == 1 {
            // SAFETY: as in `run_chunks`.
            unsafe { body(env, 0, n) };
            return;
        }
        let s = &self.shared;
        let job = {
            let mut g = s.job.lock().unwrap_or_else(|e| e.into_inner());
            // Parked workers start late (a wake-up is tens of microseconds
            // on a busy host): the loop then goes out in SLEEPER_SPLIT
            // chunks per thread, so that the caller takes on what they
            // have not started instead of waiting for their share.
            let chunk = if s.sleepers.load(Ordering::Relaxed) > 0 {
                (n + t * SLEEPER_SPLIT - 1) / (t * SLEEPER_SPLIT)
            } else {
                chunk
            };
            let chunks = (n + chunk - 1) / chunk;
            let job = Job {
                body,
                env: env as usize,
                n,
                chunk,
                // Chunk 0 is the caller's.
                next: Arc::new(AtomicI64::new(1)),
                remaining: Arc::new(AtomicI64::new(chunks)),
                seats: Arc::new(AtomicI64::new(t - 1)),
            };
            *g = Some(job.clone());
            s.epoch.fetch_add(1, Ordering::AcqRel);
            // Sleepers count under this lock, so none is missed.
            if s.sleepers.load(Ordering::Relaxed) > 0 {
                s.wake.notify_all();
            }
            job
        };
        run_chunk(s, &job, 0);
        run_chunks(s, &job);
        // Wait for the others: spin briefly, then park.
        let t0 = Instant::now();
        while job.remaining.load(Ordering::Acquire) > 0 {
            if t0.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let g = s.done.lock().unwrap_or_else(|e| e.into_inner());
            s.waiting.store(1, Ordering::SeqCst);
            if job.remaining.load(Ordering::SeqCst) > 0 {
                let _ = s
                    .done_cv
                    .wait_timeout(g, Duration::from_millis(1))
                    .unwrap_or_else(|e| e.into_inner());
            }
            s.waiting.store(0, Ordering::SeqCst);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(1, Ordering::Release);
        {
            let _g = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    unsafe extern "C" fn mark(env: *mut c_void, lo: i64, hi: i64) {
        // SAFETY: env is the test's counter array.
        let v = unsafe { &*(env as *const Vec<AtomicU32>) };
        for i in lo..hi {
            v[i as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn every_index_runs_once_over_many_jobs() {
        for threads in [1, 2, 3, 8] {
            let p = Pool::new(threads);
            for n in [0usize, 1, 2, 5, 64, 1000] {
                for _ in 0..20 {
                    let v: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
                    // SAFETY: `mark` touches each index of `v` once.
                    unsafe { p.run(n as i64, 0, mark, &v as *const _ as *mut c_void) };
                    assert!(
                        v.iter().all(|x| x.load(Ordering::Relaxed) == 1),
                        "threads {threads} n {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn jobs_posted_to_parked_workers_run_every_index_once() {
        // Past SPIN the workers park: the job goes out in finer chunks.
        for threads in [2, 3] {
            let p = Pool::new(threads);
            for n in [1usize, 7, 1000] {
                for _ in 0..3 {
                    std::thread::sleep(SPIN * 3);
                    let v: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
                    // SAFETY: `mark` touches each index of `v` once.
                    unsafe { p.run(n as i64, 0, mark, &v as *const _ as *mut c_void) };
                    assert!(
                        v.iter().all(|x| x.load(Ordering::Relaxed) == 1),
                        "threads {threads} n {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn wake_returns_with_every_worker_awake() {
        for threads in [1, 2, 3] {
            let p = Pool::new(threads);
            for _ in 0..3 {
                // Past SPIN the workers park (or are about to).
                std::thread::sleep(SPIN * 3);
                let before = p.shared.seen.load(Ordering::Acquire);
                p.wake();
                // Every worker has seen it (one that noticed the last loop
                // late counts twice).
                let woke = p.shared.seen.load(Ordering::Acquire) - before;
                assert!(woke >= threads as u64 - 1, "threads {threads}: {woke}");
                // Still spinning: a loop right after needs no notify.
                let v: Vec<AtomicU32> = (0..64).map(|_| AtomicU32::new(0)).collect();
                // SAFETY: `mark` touches each index of `v` once.
                unsafe { p.run(64, 0, mark, &v as *const _ as *mut c_void) };
                assert!(v.iter().all(|x| x.load(Ordering::Relaxed) == 1));
            }
        }
    }

    unsafe extern "C" fn record_thread(env: *mut c_void, lo: i64, hi: i64) {
        // SAFETY: env is the test's per-index thread-id array.
        let v = unsafe { &*(env as *const Vec<Mutex<Option<std::thread::ThreadId>>>) };
        for i in lo..hi {
            *v[i as usize].lock().unwrap() = Some(std::thread::current().id());
            // Slow enough that woken workers arrive before the caller is
            // done, so a loop that lets too many threads in is seen.
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    #[test]
    fn little_work_runs_on_the_calling_thread() {
        let p = Pool::new(4);
        let me = std::thread::current().id();
        // (n, cost per index, at most this many threads)
        for (n, cost, most) in [
            (64, 10, 1),
            (64, MIN_TASK_COST / 64, 1),
            (64, MIN_TASK_COST / 32, 2),
            (8, MIN_TASK_COST, 4),
            (8, 0, 4),
        ] {
            // Every other run finds the workers parked (finer chunks).
            for i in 0..20 {
                if i % 2 == 1 {
                    std::thread::sleep(SPIN * 3);
                }
                let v: Vec<Mutex<Option<std::thread::ThreadId>>> =
                    (0..n).map(|_| Mutex::new(None)).collect();
                // SAFETY: `record_thread` touches each index of `v` once.
                unsafe { p.run(n as i64, cost, record_thread, &v as *const _ as *mut c_void) };
                let mut ids: Vec<_> = v.iter().map(|m| m.lock().unwrap().unwrap()).collect();
                // The caller always takes the first chunk.
                assert_eq!(ids[0], me, "n {n} cost {cost}");
                ids.sort_by_key(|t| format!("{t:?}"));
                ids.dedup();
                assert!(
                    ids.len() <= most,
                    "n {n} cost {cost}: {} threads",
                    ids.len()
                );
                if most == 1 {
                    assert_eq!(ids, [me]);
                }
            }
        }
    }
}
