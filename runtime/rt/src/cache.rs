//! Cold caches for benchmarks: what runs after [`CacheFlush::run`] reads
//! its weights from DRAM, as every layer of a model larger than the caches
//! does. Used by `lpc run --cold` and the kernel benchmark; kept here (no
//! LLVM) so that the `lpc` library and its tests need no code generator.

/// The last-level cache's size in bytes (64 MiB when sysfs does not say).
pub fn llc_bytes() -> usize {
    (0..8)
        .filter_map(|i| {
            let d = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
            let level = std::fs::read_to_string(format!("{d}/level")).ok()?;
            let size = std::fs::read_to_string(format!("{d}/size")).ok()?;
            let size = size.trim();
            let kb: usize = size.strip_suffix('K')?.parse().ok()?;
            (level.trim() == "3").then_some(kb << 10)
        })
        .max()
        .unwrap_or(64 << 20)
}

/// A buffer twice the last-level cache; `run` reads through it, so that
/// what runs next reads its weights from DRAM, as every layer of a model far
/// larger than the caches does (a 260 MB L3 would otherwise keep a whole
/// 5120 x 25600 weight, or a small model, between timed runs). It reads one
/// part per CPU, each on its own thread, so that every core's private
/// caches are flushed, not only the caller's (a worker's 1 MB L2 would
/// otherwise keep its share of a small weight between runs). The buffer
/// is written once, at creation (so its pages are real); `run` only reads,
/// leaving the caches full of clean lines, as after the previous layers'
/// weights streamed through, not of dirty lines whose write-backs would
/// tax the next run's every cache miss.
pub struct CacheFlush(Vec<u8>);
impl std::fmt::Debug for CacheFlush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CacheFlush({} bytes)", self.0.len())
    }
}
impl Default for CacheFlush {
    fn default() -> Self {
        Self::new()
    }
}
impl CacheFlush {
    pub fn new() -> Self {
        Self(vec![1; 2 * llc_bytes()])
    }
    pub fn run(&mut self) {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let part = self.0.len().div_ceil(cpus).next_multiple_of(64);
        std::thread::scope(|s| {
            for c in self.0.chunks(part) {
                s.spawn(move || {
                    let mut sum = 0u8;
                    for i in (0..c.len()).step_by(64) {
                        sum = sum.wrapping_add(std::hint::black_box(c[i]));
                    }
                    std::hint::black_box(sum);
                });
            }
        });
    }
}
