//! Generated `lpc.qgemm` kernels on Qwen3-32B shapes, beside the plain f32
//! `lpc.linear` that lpc generates for the same shape and a memory-read
//! bandwidth probe, all in this process:
//!
//!   cargo bench -p lpc-target-cpu --bench qgemm
//!   LPC_BENCH_SHAPES=5120x25600,25600x5120 LPC_BENCH_M=1,16,512 LPC_BENCH_THREADS=1,2 ...
//!   LPC_BENCH_KEEP=/tmp/libs (keep the compiled libraries, for profiling)
//!
//! Every timed run starts from cold caches (a buffer twice the L3 is
//! read through first: this machine's 260 MB L3 would otherwise hold a
//! 5120 x 25600 weight between runs, where a 32B model's weights always
//! come from DRAM; it reads on every CPU, flushing each core's L2), then
//! the library's workers are woken (`lpc_model_wake`): they spin, as after
//! the layer before in a model, instead of taking tens of microseconds to
//! wake from the flush's milliseconds. `LPC_BENCH_WARM=1` skips the flush,
//! for the small shapes of the fixture models, whose weights stay cached.
//!
//! Prints time (median of LPC_BENCH_RUNS, default 5, at M = 1 at least 25,
//! with min-max), GOP/s (2·M·N·K), weight GB/s, the fraction of the
//! measured read bandwidth (M = 1: probed just before and after the cell,
//! the better of the two, shown as `read`) or of the compute peak (M > 1:
//! the int8 VNNI peak for 4-bit
//! formats; for HiF8 the bf16 dot-product peak, 230 GFLOP/s per core by
//! ../shared/TOOLCHAIN.md, measured instead when this CPU has AVX-512 BF16),
//! and the speed-up over f32; writes target/bench/qgemm.json. The peaks
//! are probed in the same process (independent chains of `vpdpbusd`,
//! `vfmadd231ps`, `vdpbf16ps`).

use lpc_ir::Dim;
use lpc_runtime::Format;
use lpc_target_cpu::bench::{linear_graph, qgemm_graph, CacheFlush, OpLib, QgemmSpec};
use lpc_target_cpu::CpuTarget;
use std::time::Instant;

/// ../shared/TOOLCHAIN.md's bf16 `vdpbf16ps` peak per core (GFLOP/s), used
/// when this CPU cannot run the instruction to measure it.
const BF16_PEAK_GFLOPS_PER_CORE: f64 = 230.0;

/// Peak probes, one core: GOP/s of 12 independent chains of one
/// instruction (enough to cover its latency), `iters` rounds.
mod peak {
    use std::arch::asm;
    use std::time::Instant;

    fn best(f: impl Fn() -> f64) -> f64 {
        (0..5).map(|_| f()).fold(0.0, f64::max)
    }

    /// Seconds for `iters` rounds of 12 independent instructions `op`
    /// (Intel syntax: `zmm0..11` accumulate, `zmm12`/`zmm13` are sources).
    macro_rules! chains {
        ($op:literal, $iters:expr) => {{
            let s = Instant::now();
            // SAFETY: register-only vector instructions in a counted loop;
            // every register touched is declared clobbered.
            unsafe {
                asm!(
                    "vpxord zmm12, zmm12, zmm12",
                    "vpxord zmm13, zmm13, zmm13",
                    "2:",
                    concat!($op, " zmm0, zmm12, zmm13"),
                    concat!($op, " zmm1, zmm12, zmm13"),
                    concat!($op, " zmm2, zmm12, zmm13"),
                    concat!($op, " zmm3, zmm12, zmm13"),
                    concat!($op, " zmm4, zmm12, zmm13"),
                    concat!($op, " zmm5, zmm12, zmm13"),
                    concat!($op, " zmm6, zmm12, zmm13"),
                    concat!($op, " zmm7, zmm12, zmm13"),
                    concat!($op, " zmm8, zmm12, zmm13"),
                    concat!($op, " zmm9, zmm12, zmm13"),
                    concat!($op, " zmm10, zmm12, zmm13"),
                    concat!($op, " zmm11, zmm12, zmm13"),
                    "dec {n}",
                    "jnz 2b",
                    n = inout(reg) $iters => _,
                    out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                    out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                    out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
                    out("zmm12") _, out("zmm13") _,
                    options(nostack, nomem),
                );
            }
            s.elapsed().as_secs_f64()
        }};
    }

    /// (int8 VNNI GOP/s, f32 FMA GFLOP/s, bf16 GFLOP/s), each `None` where
    /// the CPU lacks the instruction.
    pub fn probe() -> (Option<f64>, Option<f64>, Option<f64>) {
        use std::arch::is_x86_feature_detected as has;
        let n: usize = 2_000_000;
        let rounds = (n * 12) as f64;
        let avx512 = has!("avx512f");
        // 64 u8·s8 products per `vpdpbusd` (2 OP each), 16 FMAs per
        // `vfmadd231ps` (2 FLOP each), 32 bf16 products per `vdpbf16ps`.
        let vnni = (avx512 && has!("avx512vnni"))
            .then(|| best(|| rounds * 128.0 / chains!("vpdpbusd", n) / 1e9));
        let fma = avx512.then(|| best(|| rounds * 32.0 / chains!("vfmadd231ps", n) / 1e9));
        let bf16 = (avx512 && has!("avx512bf16"))
            .then(|| best(|| rounds * 64.0 / chains!("vdpbf16ps", n) / 1e9));
        (vnni, fma, bf16)
    }
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A read prefetch of the line at `p`: into all cache levels (`l1`), or
/// into L2 and below.
fn prefetch_line<T>(p: *const T, l1: bool) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        if l1 {
            _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
        } else {
            _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, l1);
}

/// Runs per measurement: `runs`, and at least [`M1_MIN_RUNS`] at M = 1.
fn runs_for(m: usize, runs: usize) -> usize {
    if m == 1 {
        runs.max(M1_MIN_RUNS)
    } else {
        runs
    }
}

/// Timed runs of an M = 1 kernel at least: its 0.05-3 ms runs from cold
/// caches spread up to 2x from one run to the next on this host (a 1024 x
/// 3072 HiF8 median of 9 went 0.11 -> 0.19 ms between processes), and each
/// costs little more than its flush (about 20 ms).
const M1_MIN_RUNS: usize = 25;

/// Rounds of the read probe around each M = 1 cell (each of its three
/// loops once; 9 at the start).
const CELL_PROBE_ROUNDS: usize = 3;

/// Median, min and max seconds of `runs` calls on `x [m, k]` (after one),
/// each from cold caches (warm with `LPC_BENCH_WARM=1`: as a small layer
/// runs inside a model, its weights still cached from the last run).
fn time(
    lib: &OpLib,
    x: &[f32],
    m: usize,
    k: usize,
    runs: usize,
    ev: &mut CacheFlush,
) -> (f64, f64, f64) {
    let mut t = Vec::with_capacity(runs);
    let warm = std::env::var("LPC_BENCH_WARM").is_ok_and(|v| v == "1");
    for i in 0..runs + 1 {
        if !warm {
            ev.run();
            // Workers spinning, as after the layer before: a parked one
            // takes tens of microseconds to wake on this host.
            lib.wake();
        }
        let s = Instant::now();
        // The output stays where the library wrote it: copying it out is
        // no part of the kernel.
        lib.run_in_place(&[(x, &[m, k])]).unwrap();
        if i > 0 {
            t.push(s.elapsed().as_secs_f64());
        }
    }
    t.sort_by(|a, b| a.total_cmp(b));
    (t[t.len() / 2], t[0], t[t.len() - 1])
}

/// The read bandwidth probe's buffer: 1 GiB, larger than the caches.
struct ReadProbe {
    buf: Vec<u32>,
}

impl ReadProbe {
    fn new() -> Self {
        Self {
            buf: (0..256u32 << 20).collect(),
        }
    }

    /// Read bandwidth (GB/s) over the whole buffer, `threads` readers, the
    /// best of `rounds` loops taking turns: plain sums, the same with a
    /// software prefetch into L1 4 KiB ahead, and with one into L2 128 KiB
    /// ahead (what the M = 1 strip kernel does), whichever reads fastest.
    fn gbs(&self, threads: usize, rounds: usize) -> f64 {
        let (buf, n) = (&self.buf, self.buf.len());
        let mut best = 0f64;
        for round in 0..rounds {
            // In u32 elements ahead, and into which level.
            let prefetch = [None, Some((1024, true)), Some((32 << 10, false))][round % 3];
            let s = Instant::now();
            let sum: u64 = std::thread::scope(|sc| {
                let chunk = n.div_ceil(threads);
                let hs: Vec<_> = buf
                    .chunks(chunk)
                    .map(|c| {
                        sc.spawn(move || {
                            // Eight independent sums: the loads, not an add chain, limit it.
                            let mut acc = [0u32; 8];
                            for (i, w) in c.chunks_exact(8).enumerate() {
                                if let (Some((ahead, l1)), true) = (prefetch, i % 2 == 0) {
                                    prefetch_line(w.as_ptr().wrapping_add(ahead), l1);
                                }
                                for (a, &x) in acc.iter_mut().zip(w) {
                                    *a = a.wrapping_add(x);
                                }
                            }
                            acc.iter().fold(0u64, |a, &x| a.wrapping_add(x as u64))
                        })
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().unwrap())
                    .fold(0, u64::wrapping_add)
            });
            std::hint::black_box(sum);
            best = best.max((n * 4) as f64 / s.elapsed().as_secs_f64() / 1e9);
        }
        best
    }
}

fn main() {
    let shapes = env_list(
        "LPC_BENCH_SHAPES",
        "5120x25600,25600x5120,5120x5120,1024x3072,3072x1024",
    );
    let ms: Vec<usize> = env_list("LPC_BENCH_M", "1,16,512")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let threads: Vec<usize> = env_list("LPC_BENCH_THREADS", "1,2")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let formats = env_list("LPC_BENCH_FORMATS", "mxfp4,hif4,hif8");
    let runs: usize = std::env::var("LPC_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    // LPC_BENCH_KEEP=DIR keeps the libraries there (for perf annotate and
    // objdump); by default they go to a temporary directory.
    let tmp = tempfile::tempdir().unwrap();
    let keep = std::env::var_os("LPC_BENCH_KEEP").map(std::path::PathBuf::from);
    if let Some(d) = &keep {
        std::fs::create_dir_all(d).unwrap();
    }
    let dir = keep.as_deref().unwrap_or(tmp.path());
    let mut json = Vec::new();
    let mut ev = CacheFlush::new();
    let probe = ReadProbe::new();
    let bw: Vec<(usize, f64)> = threads.iter().map(|&t| (t, probe.gbs(t, 9))).collect();
    let (vnni_peak, fma_peak, bf16_peak) = peak::probe();
    println!(
        "peak per core: int8 vpdpbusd {}, f32 FMA {}, bf16 vdpbf16ps {}",
        vnni_peak.map_or("n/a".into(), |v| format!("{v:.1} GOP/s")),
        fma_peak.map_or("n/a".into(), |v| format!("{v:.1} GFLOP/s")),
        bf16_peak.map_or(
            format!("not on this CPU (using {BF16_PEAK_GFLOPS_PER_CORE} GFLOP/s)"),
            |v| format!("{v:.1} GFLOP/s")
        ),
    );
    let vnni_peak = vnni_peak.unwrap_or(465.0);
    let bf16_peak = bf16_peak.unwrap_or(BF16_PEAK_GFLOPS_PER_CORE);
    for (t, b) in &bw {
        println!("read bandwidth, {t} thread(s): {b:.1} GB/s");
    }
    println!(
        "{:<6} {:>5} {:>11} {:>2} {:>10} {:>19} {:>8} {:>7} {:>8} {:>8} {:>7}",
        "format", "M", "K x N", "T", "ms", "min-max", "GOP/s", "GB/s", "limit%", "vs f32", "read"
    );
    for shape in &shapes {
        let (k, n) = shape
            .split_once('x')
            .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()))
            .unwrap();
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        };
        let w: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
        let mmax = *ms.iter().max().unwrap();
        let x: Vec<f32> = (0..mmax * k).map(|_| rnd() * 20.0).collect();
        // f32 baseline: W as [k, n].
        let wt: Vec<f32> = {
            let mut t = vec![0f32; k * n];
            for j in 0..n {
                for i in 0..k {
                    t[i * n + j] = w[j * k + i];
                }
            }
            t
        };
        for &th in &threads {
            // Distinct file names: dlopen caches libraries by path.
            let tag = format!("{k}x{n}_t{th}");
            let base = OpLib::build(
                &linear_graph(Dim::Sym("m".into()), k, n, &wt),
                CpuTarget::host().unwrap(),
                dir,
                &format!("f32_{tag}"),
                th as i32,
            )
            .unwrap();
            let mut base_t = std::collections::HashMap::new();
            for &m in &ms {
                base_t.insert(
                    m,
                    time(&base, &x[..m * k], m, k, runs_for(m, runs), &mut ev).0,
                );
            }
            drop(base);
            for fname in &formats {
                let f = Format::parse(fname, None, None).unwrap();
                let spec = QgemmSpec {
                    rotate: if f.block_len() > 1 { 32 } else { 0 },
                    scaled: f.block_len() == 1,
                    ..Default::default()
                };
                let (g, _, _) = qgemm_graph(f, Dim::Sym("m".into()), k, n, w.clone(), &spec);
                let lib = OpLib::build(
                    &g,
                    CpuTarget::host().unwrap(),
                    dir,
                    &format!("{fname}_{tag}"),
                    th as i32,
                )
                .unwrap();
                drop(g);
                for &m in &ms {
                    // M = 1: the read bandwidth probed again just before and
                    // after the cell (the better of the two), since this
                    // host's moves by a fifth over the minutes a whole table
                    // takes.
                    let cell_bw = || (m == 1).then(|| probe.gbs(th, CELL_PROBE_ROUNDS));
                    let before = cell_bw();
                    let (med, lo, hi) = time(&lib, &x[..m * k], m, k, runs_for(m, runs), &mut ev);
                    let cell = before.zip(cell_bw()).map(|(a, b)| a.max(b));
                    let gops = 2.0 * (m * n * k) as f64 / med / 1e9;
                    let gbs = lib.weight_bytes as f64 / med / 1e9;
                    let bwl = cell.unwrap_or(bw.iter().find(|b| b.0 == th).unwrap().1);
                    let peak = if fname == "hif8" {
                        bf16_peak
                    } else {
                        vnni_peak
                    };
                    let limit = if m == 1 {
                        gbs / bwl
                    } else {
                        gops / (peak * th as f64)
                    };
                    let speedup = base_t[&m] / med;
                    println!(
                        "{fname:<6} {m:>5} {:>11} {th:>2} {:>10.3} {:>19} {gops:>8.1} {gbs:>7.2} {:>7.1}% {speedup:>7.2}x {:>7}",
                        format!("{k}x{n}"),
                        med * 1e3,
                        format!("{:.3}-{:.3}", lo * 1e3, hi * 1e3),
                        limit * 100.0,
                        cell.map_or(String::new(), |b| format!("{b:.1}"))
                    );
                    let read = cell.map_or(String::new(), |b| format!(",\"read_gbs\":{b:.2}"));
                    json.push(format!(
                        "{{\"format\":\"{fname}\",\"m\":{m},\"k\":{k},\"n\":{n},\"threads\":{th},\"ms\":{:.4},\"min_ms\":{:.4},\"max_ms\":{:.4},\"gops\":{gops:.2},\"weight_gbs\":{gbs:.3}{read},\"limit_fraction\":{limit:.4},\"speedup_vs_f32\":{speedup:.3}}}",
                        med * 1e3, lo * 1e3, hi * 1e3
                    ));
                }
            }
        }
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let bws: Vec<String> = bw
        .iter()
        .map(|(t, b)| format!("{{\"threads\":{t},\"gbs\":{b:.2}}}"))
        .collect();
    std::fs::write(
        out.join("qgemm.json"),
        format!(
            "{{\"read_bandwidth\":[{}],\"kernels\":[{}]}}\n",
            bws.join(","),
            json.join(",")
        ),
    )
    .unwrap();
    println!("wrote {}", out.join("qgemm.json").display());
}
