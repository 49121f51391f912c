//! `lpc-rt`: what every library lpc emits links besides its generated code.
//!
//! - the C API's implementation (`lpc_model_load/run/free`, `lpc_last_error`;
//!   the generated library exports thin wrappers that pass its descriptor and
//!   graph function in): input checks against the descriptor before any work,
//!   weights mapping and checking ([`weights`]), output ownership;
//! - the services generated code calls (`lpc_rt_*`): allocation of
//!   intermediates from a per-model pool, a parallel-for, error reporting, and
//!   activation quantization through the one reference codec of each format
//!   (`lpc-runtime`).
//!
//! The runtime implements no operator: the model's ops are LLVM IR generated
//! by `targets/cpu`.

pub mod cache;
pub mod desc;
pub mod gpu;
pub mod pool;
pub mod weights;

use desc::{DimDesc, ModelDesc};
use lpc_runtime::formats::{Hif4Variant, Hif8Rounding, Mxfp4Rounding};
use lpc_runtime::Format;
use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Largest rank of a tensor crossing the C API.
pub const MAX_RANK: usize = 8;

/// A tensor crossing the C API (`lpc_tensor` in the header).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LpcTensor {
    pub dtype: i32,
    pub rank: i32,
    pub dims: [i64; MAX_RANK],
    pub data: *mut c_void,
}

/// Load options (`lpc_options` in the header); a null pointer means defaults.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LpcOptions {
    /// Worker threads; 0: `LPC_NUM_THREADS`, else the machine's cores.
    pub num_threads: i32,
}

/// The generated graph function: `ctx`, the weights data region, the checked
/// inputs, the outputs to fill. Returns 0, or nonzero after `lpc_rt_error`.
pub type GraphFn = unsafe extern "C" fn(
    ctx: *mut RunCtx,
    weights: *const u8,
    inputs: *const LpcTensor,
    outputs: *mut LpcTensor,
) -> i32;

/// A loop body handed to [`lpc_rt_parallel_for`]: runs indices `[lo, hi)`.
pub type BodyFn = unsafe extern "C" fn(env: *mut c_void, lo: i64, hi: i64);

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: String) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Error codes of the C API.
pub mod code {
    pub const OK: i32 = 0;
    pub const BAD_ARGUMENT: i32 = 1;
    pub const BAD_INPUT: i32 = 2;
    pub const RUN_FAILED: i32 = 3;
    pub const INTERNAL: i32 = 4;
}

enum Weights {
    Mapped(weights::Mapped),
    Embedded(*const u8),
}

/// A loaded model (`lpc_model*` in C).
pub struct Model {
    desc: ModelDesc,
    /// NUL-terminated input and output names for the C accessors.
    names: [Vec<CString>; 2],
    graph: GraphFn,
    weights: Weights,
    workers: std::sync::Arc<pool::Pool>,
    /// Buffers of the previous run's outputs, owned until the next run.
    outputs: Vec<(*mut u8, usize)>,
    pool: Pool,
    /// The run's live-buffer map, kept between runs for its capacity.
    live: WordMap<usize>,
    /// Set while a run is in progress (runs on one model must not overlap).
    busy: std::sync::atomic::AtomicBool,
    /// Where the kernels of a `--target cuda` library run, and its weights
    /// in device-visible memory (CUDA: a managed copy of the weights).
    device: Option<std::sync::Arc<gpu::Device>>,
    device_weights: Option<*mut u8>,
    /// Time per node over all runs, for a library compiled with
    /// `--profile` (empty otherwise), and the last report's text.
    profile: Vec<NodeTime>,
    profile_text: CString,
}

/// A node's share of the runs (`lpc compile --profile`).
#[derive(Clone, Debug, Default)]
struct NodeTime {
    /// `op\tname` as the library gave it.
    label: String,
    ns: u64,
    calls: u64,
}

/// The running node's marks in one run (`lpc_rt_profile`).
#[derive(Debug, Default)]
struct RunProfile {
    /// Per node index: its label and its time in this run.
    nodes: Vec<(*const c_char, u64, u64)>,
    /// The node running since when.
    current: Option<(usize, std::time::Instant)>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.desc.name)
            .field("threads", &self.workers.threads())
            .finish()
    }
}

/// A small map keyed by a word (a pointer or a size), as a vector searched
/// from its end: a run's buffers are few and mostly released soon after
/// they are allocated, and the sizes a model allocates are few, so a short
/// backwards scan beats hashing (the maps are used several times per op).
#[derive(Debug)]
struct WordMap<V>(Vec<(usize, V)>);

impl<V> Default for WordMap<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V> WordMap<V> {
    fn position(&self, k: usize) -> Option<usize> {
        self.0.iter().rposition(|e| e.0 == k)
    }
    /// Adds `k` (not present: the caller's keys are unique).
    fn insert(&mut self, k: usize, v: V) {
        self.0.push((k, v));
    }
    fn remove(&mut self, k: &usize) -> Option<V> {
        self.position(*k).map(|i| self.0.swap_remove(i).1)
    }
    fn get_mut(&mut self, k: &usize) -> Option<&mut V> {
        self.position(*k).map(|i| &mut self.0[i].1)
    }
    fn drain(&mut self) -> impl Iterator<Item = (usize, V)> + '_ {
        self.0.drain(..)
    }
}

impl<V: Default> WordMap<V> {
    fn entry_or_default(&mut self, k: usize) -> &mut V {
        let i = match self.position(k) {
            Some(i) => i,
            None => {
                self.0.push((k, V::default()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }
}

/// Freed buffers by size, reused by later allocations of the same size (a
/// model's calls repeat the same sizes). With a CUDA device, buffers are
/// managed memory.
#[derive(Default, Debug)]
struct Pool {
    free: WordMap<Vec<*mut u8>>,
    device: Option<std::sync::Arc<gpu::Device>>,
}

const BUF_ALIGN: usize = 64;

fn layout(bytes: usize) -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(bytes.max(1), BUF_ALIGN).expect("valid layout")
}

impl Pool {
    fn get(&mut self, bytes: usize) -> *mut u8 {
        if let Some(p) = self.free.get_mut(&bytes).and_then(Vec::pop) {
            return p;
        }
        if let Some(c) = self.device.as_ref().and_then(|d| d.cuda()) {
            return c.alloc(bytes);
        }
        // SAFETY: the layout has a non-zero size.
        unsafe { std::alloc::alloc(layout(bytes)) }
    }
    fn put(&mut self, p: *mut u8, bytes: usize) {
        self.free.entry_or_default(bytes).push(p);
        // Sizes that never come back (a KV cache one token longer per
        // decode step) would pile up: past POOL_SIZES sizes, the oldest
        // size's buffers are freed.
        if self.free.0.len() > POOL_SIZES {
            let (bytes, list) = self.free.0.remove(0);
            self.free_all(bytes, &list);
        }
    }
    fn free_all(&self, bytes: usize, list: &[*mut u8]) {
        let cuda = self.device.as_ref().and_then(|d| d.cuda());
        for &p in list {
            match cuda {
                Some(c) => c.free(p),
                // SAFETY: allocated by `get` with this size.
                None => unsafe { std::alloc::dealloc(p, layout(bytes)) },
            }
        }
    }
}

/// Distinct buffer sizes the pool keeps freed buffers of (a model's runs
/// use a few dozen).
const POOL_SIZES: usize = 256;

impl Drop for Pool {
    fn drop(&mut self) {
        for (bytes, list) in std::mem::take(&mut self.free).drain() {
            self.free_all(bytes, &list);
        }
    }
}

/// The state of one `lpc_model_run` call, passed to generated code.
#[derive(Debug)]
pub struct RunCtx {
    live: WordMap<usize>,
    pool: Pool,
    workers: std::sync::Arc<pool::Pool>,
    error: Option<String>,
    symbols: Vec<u64>,
    device: Option<std::sync::Arc<gpu::Device>>,
    /// Launches not yet waited for (CUDA).
    in_flight: bool,
    profile: RunProfile,
}

impl RunCtx {
    fn alloc(&mut self, bytes: usize) -> *mut u8 {
        let p = self.pool.get(bytes);
        if !p.is_null() {
            self.live.insert(p as usize, bytes);
        }
        p
    }
    fn release(&mut self, p: *mut u8) {
        if let Some(bytes) = self.live.remove(&(p as usize)) {
            self.pool.put(p, bytes);
        }
    }
}

// ---------------------------------------------------------------------------
// Services called by generated code.

/// Allocates `bytes` (64-byte aligned) for an intermediate or an output.
/// Returns null (after recording an error) when memory runs out.
///
/// # Safety
/// `ctx` is the pointer the runtime passed to the graph function.
#[no_mangle]
pub unsafe extern "C" fn lpc_rt_alloc(ctx: *mut RunCtx, bytes: i64) -> *mut u8 {
    // SAFETY: see the contract above.
    let ctx = unsafe { &mut *ctx };
    let p = ctx.alloc(bytes.max(0) as usize);
    if p.is_null() {
        ctx.error = Some(format!("out of memory allocating {bytes} bytes"));
    }
    p
}

/// Returns a buffer from [`lpc_rt_alloc`] after its last use.
///
/// # Safety
/// `ctx` as for [`lpc_rt_alloc`]; `p` came from it in this call.
#[no_mangle]
pub unsafe extern "C" fn lpc_rt_release(ctx: *mut RunCtx, p: *mut u8) {
    // SAFETY: see the contract above.
    unsafe { &mut *ctx }.release(p);
}

/// A thread's scratch buffer (see [`lpc_rt_scratch`]).
struct Scratch {
    ptr: *mut u8,
    cap: usize,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: allocated by `lpc_rt_scratch` with this layout.
            unsafe { std::alloc::dealloc(self.ptr, layout(self.cap)) };
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<[Scratch; 2]> = const {
        std::cell::RefCell::new([
            Scratch { ptr: std::ptr::null_mut(), cap: 0 },
            Scratch { ptr: std::ptr::null_mut(), cap: 0 },
        ])
    };
}

/// Scratch memory for parallel bodies (the GEMMs' panels): buffer `slot`
/// (0 or 1) of the calling thread, at least `bytes` long and 64-byte
/// aligned. It stays the thread's for its next calls (grown when too
/// small, freed when the thread ends), so a body that runs again finds it
/// without a trip through `malloc`; its contents are unspecified. A body
/// uses each slot once at a time. Null when memory runs out (or `slot` is
/// not 0 or 1).
#[no_mangle]
pub extern "C" fn lpc_rt_scratch(slot: i32, bytes: i64) -> *mut u8 {
    let bytes = (bytes.max(1) as usize).next_multiple_of(64);
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let Some(b) = s.get_mut(slot as usize) else {
            return std::ptr::null_mut();
        };
        if b.cap < bytes {
            if !b.ptr.is_null() {
                // SAFETY: allocated below with this layout.
                unsafe { std::alloc::dealloc(b.ptr, layout(b.cap)) };
            }
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { std::alloc::alloc(layout(bytes)) };
            (b.ptr, b.cap) = if p.is_null() { (p, 0) } else { (p, bytes) };
        }
        b.ptr
    })
}

/// Records a run-time error of node `node` (a NUL-terminated name).
///
/// # Safety
/// `ctx` as for [`lpc_rt_alloc`]; `node` and `msg` are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn lpc_rt_error(ctx: *mut RunCtx, node: *const c_char, msg: *const c_char) {
    // SAFETY: see the contract above.
    let (ctx, node, msg) = unsafe {
        (
            &mut *ctx,
            CStr::from_ptr(node).to_string_lossy(),
            CStr::from_ptr(msg).to_string_lossy(),
        )
    };
    if ctx.error.is_none() {
        ctx.error = Some(format!("node `{node}`: {msg}"));
    }
}

/// Launches kernel `k` of a `--target cuda` library over `count` work items
/// with `argv` (one pointer per kernel parameter, the first to the count).
/// Returns 0, or 1 after recording an error.
///
/// # Safety
/// `ctx` as for [`lpc_rt_alloc`]; `argv` matches kernel `k`'s parameters.
#[no_mangle]
pub unsafe extern "C" fn lpc_rt_launch(
    ctx: *mut RunCtx,
    k: i32,
    count: i64,
    argv: *mut *mut c_void,
) -> i32 {
    // SAFETY: see the contract above.
    let ctx = unsafe { &mut *ctx };
    if count <= 0 {
        return 0;
    }
    let r = match &ctx.device {
        // SAFETY: as above.
        Some(d) => unsafe { d.launch(k as usize, count as u64, argv) },
        None => Err("a kernel launch in a library loaded without a device".into()),
    };
    match r {
        Ok(()) => {
            ctx.in_flight = ctx.device.as_ref().is_some_and(|d| d.cuda().is_some());
            0
        }
        Err(e) => {
            if ctx.error.is_none() {
                ctx.error = Some(e);
            }
            1
        }
    }
}

/// Called before host-side code touches buffers a kernel may still be
/// writing: waits for the launches in flight. Returns 0, or 1 after
/// recording an error (a fault in an earlier kernel).
///
/// # Safety
/// `ctx` as for [`lpc_rt_alloc`].
#[no_mangle]
pub unsafe extern "C" fn lpc_rt_host(ctx: *mut RunCtx) -> i32 {
    // SAFETY: see the contract above.
    let ctx = unsafe { &mut *ctx };
    if !ctx.in_flight {
        return 0;
    }
    ctx.in_flight = false;
    let r = match ctx.device.as_ref().and_then(|d| d.cuda()) {
        Some(c) => c.synchronize(),
        None => Ok(()),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            if ctx.error.is_none() {
                ctx.error = Some(e);
            }
            1
        }
    }
}

/// Runs `body(env, lo, hi)` over `[0, n)` split into contiguous chunks, one
/// per worker thread (the calling thread takes the first), as many threads
/// as the estimated work `n · cost` allows (`cost`: about cycles per index,
/// 0 when unknown; see [`pool::MIN_TASK_COST`]).
///
/// # Safety
/// `ctx` as for [`lpc_rt_alloc`]; `body` may be called concurrently on
/// disjoint ranges with the same `env`.
#[no_mangle]
pub unsafe extern "C" fn lpc_rt_parallel_for(
    ctx: *mut RunCtx,
    n: i64,
    cost: i64,
    body: BodyFn,
    env: *mut c_void,
) {
    // SAFETY: see the contract above.
    unsafe { (*ctx).workers.run(n, cost, body, env) };
}

/// The `(format, mode)` codes generated code passes for a format.
pub fn format_codes(f: Format) -> (i32, i32) {
    let pos = |names: &[&str], n: &str| names.iter().position(|m| *m == n).unwrap_or(0) as i32;
    match f {
        Format::Mxfp4(m) => (0, pos(Mxfp4Rounding::NAMES, m.name())),
        Format::Hif4(v) => (1, pos(Hif4Variant::NAMES, v.name())),
        Format::Hif8(m) => (2, pos(Hif8Rounding::NAMES, m.name())),
    }
}

/// The inverse of [`format_codes`].
pub fn format_from_codes(f: i32, m: i32) -> Option<Format> {
    let pick = |names: &[&'static str]| names.get(m as usize).copied();
    match f {
        0 => Format::parse("mxfp4", Some(pick(Mxfp4Rounding::NAMES)?), None).ok(),
        1 => Format::parse("hif4", None, Some(pick(Hif4Variant::NAMES)?)).ok(),
        2 => Format::parse("hif8", Some(pick(Hif8Rounding::NAMES)?), None).ok(),
        _ => None,
    }
}

/// Quantizes `rows` activation rows of length `k` (row stride `k`) with the
/// format's reference codec: each row is first rotated by the block Hadamard
/// transform when `rotate > 0`, and scaled by its power of two (written to
/// `exps[r]`) when `pow2 != 0`. Writes `rows · bytes_per_row` packed bytes.
/// With `fmt < 0` (weight-only quantization) the rows are only rotated and
/// written as f32 (`out` then holds `rows · k` floats).
///
/// # Safety
/// `x` holds `rows · k` floats, `out` the packed rows, `exps` `rows` ints
/// (when `pow2`).
#[no_mangle]
pub unsafe extern "C" fn lpc_rt_quantize_rows(
    fmt: i32,
    mode: i32,
    x: *const f32,
    rows: i64,
    k: i64,
    rotate: i64,
    pow2: i32,
    out: *mut u8,
    exps: *mut i32,
) {
    let (rows, k) = (rows.max(0) as usize, k.max(0) as usize);
    if fmt < 0 {
        // Weight-only quantization: rows rotated (or copied) as f32.
        for r in 0..rows {
            // SAFETY: in bounds by the contract above; `out` holds f32 rows.
            let (src, dst) = unsafe {
                (
                    std::slice::from_raw_parts(x.add(r * k), k),
                    std::slice::from_raw_parts_mut((out as *mut f32).add(r * k), k),
                )
            };
            dst.copy_from_slice(src);
            if rotate > 0 {
                lpc_runtime::hadamard::rotate_blocks(dst, rotate as usize);
            }
        }
        return;
    }
    let Some(f) = format_from_codes(fmt, mode) else {
        return;
    };
    // All rows at once: when they must be rotated or scaled, copied and
    // transformed in place first; then one quantization call into `out` (no
    // allocation per row).
    // SAFETY: in bounds by the contract above.
    let src = unsafe { std::slice::from_raw_parts(x, rows * k) };
    let l = lpc_runtime::formats::AxisLayout::new(&[rows, k], 1, f.block_len());
    let mut rowsbuf = Vec::new();
    if rotate > 0 || pow2 != 0 {
        rowsbuf.extend_from_slice(src);
    }
    if rotate > 0 {
        for row in rowsbuf.chunks_exact_mut(k.max(1)) {
            lpc_runtime::hadamard::rotate_blocks(row, rotate as usize);
        }
    }
    if pow2 != 0 {
        let e = lpc_runtime::formats::rowscale::scale_rows(&mut rowsbuf, &l);
        // SAFETY: as above; `exps` holds `rows` ints.
        unsafe { std::ptr::copy_nonoverlapping(e.as_ptr(), exps, rows.min(e.len())) };
    }
    let rows_in: &[f32] = if rowsbuf.is_empty() { src } else { &rowsbuf };
    let bytes = l.num_blocks() * f.block_bytes();
    // SAFETY: as above; `out` holds the packed rows.
    let out = unsafe { std::slice::from_raw_parts_mut(out, bytes) };
    let _ = f.quantize_into(rows_in, &l, out);
}

/// Quantizes `rows` activation rows of length `k` (row stride `k`), each
/// first rotated by the block Hadamard transform when `rotate > 0`, to the
/// 4-bit formats' integer block codes (`lpc_runtime::formats::codes`): row
/// `r`'s i8 codes at `codes + r·stride` (zeros after the last block), its
/// f64 block factors at `factors + r·ceil(k / block)`. Returns 0, or 1 when
/// the format has no block codes or the sizes do not fit it (nothing
/// written).
///
/// # Safety
/// `x` holds `rows · k` floats, `codes` `rows · stride` bytes (`stride` at
/// least the padded row), `factors` `rows · ceil(k / block)` doubles.
#[no_mangle]
pub unsafe extern "C" fn lpc_rt_quantize_codes(
    fmt: i32,
    mode: i32,
    x: *const f32,
    rows: i64,
    k: i64,
    rotate: i64,
    codes: *mut i8,
    stride: i64,
    factors: *mut f64,
) -> i32 {
    let (rows, k, stride) = (
        rows.max(0) as usize,
        k.max(0) as usize,
        stride.max(0) as usize,
    );
    let Some(f) = format_from_codes(fmt, mode) else {
        return 1;
    };
    let nb = k.div_ceil(f.block_len());
    // SAFETY: in bounds by the contract above.
    let (x, codes, factors) = unsafe {
        (
            std::slice::from_raw_parts(x, rows * k),
            std::slice::from_raw_parts_mut(codes, rows * stride),
            std::slice::from_raw_parts_mut(factors, rows * nb),
        )
    };
    let r = lpc_runtime::formats::codes::quantize_codes(
        f,
        x,
        k,
        rotate.max(0) as usize,
        codes,
        stride,
        factors,
    );
    r.is_err() as i32
}

// ---------------------------------------------------------------------------
// The C API, called through the generated library's exported wrappers.

fn guarded<T>(fallback: T, f: impl FnOnce() -> Result<T, String>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_error(e);
            fallback
        }
        Err(_) => {
            set_error("internal error in the lpc runtime".into());
            fallback
        }
    }
}

fn threads_from(opts: Option<&LpcOptions>) -> usize {
    if let Some(o) = opts {
        if o.num_threads > 0 {
            return o.num_threads as usize;
        }
    }
    if let Some(n) = std::env::var("LPC_NUM_THREADS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        return n;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Loads a model: decodes the library's descriptor, maps and checks the
/// weights (`path`, or the embedded data when `embedded` is not null).
/// Returns null and sets the last error on failure.
///
/// # Safety
/// `desc` points at `desc_len` bytes; `path` is null or NUL-terminated;
/// `opts` is null or valid; `embedded` is null or the library's weights.
#[no_mangle]
pub unsafe extern "C" fn lpc_rt_load(
    desc: *const u8,
    desc_len: i64,
    graph: GraphFn,
    embedded: *const u8,
    path: *const c_char,
    opts: *const LpcOptions,
) -> *mut Model {
    guarded(std::ptr::null_mut(), || {
        // SAFETY: see the contract above.
        let m = unsafe { load_model(desc, desc_len, graph, embedded, path, opts) }?;
        Ok(Box::into_raw(Box::new(m)))
    })
}

/// [`lpc_rt_load`] for a `--target cuda` library: also opens the device
/// `LPC_DEVICE` names (see [`gpu`]) with the library's PTX (`ptx_len`
/// bytes), its `n_kernels` kernel names, and their emulated entry points;
/// with CUDA, the weights are copied once into device-visible memory.
///
/// # Safety
/// As [`lpc_rt_load`]; `ptx` points at `ptx_len` bytes, `names` and
/// `emulated` at `n_kernels` NUL-terminated names and entry points.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn lpc_rt_load_gpu(
    desc: *const u8,
    desc_len: i64,
    graph: GraphFn,
    embedded: *const u8,
    path: *const c_char,
    opts: *const LpcOptions,
    ptx: *const u8,
    ptx_len: i64,
    names: *const *const c_char,
    emulated: *const gpu::PackedFn,
    n_kernels: i64,
) -> *mut Model {
    guarded(std::ptr::null_mut(), || {
        // SAFETY: see the contract above.
        let mut m = unsafe { load_model(desc, desc_len, graph, embedded, path, opts) }?;
        let n = n_kernels.max(0) as usize;
        // SAFETY: as above.
        let (ptx, names, emulated) = unsafe {
            (
                std::slice::from_raw_parts(ptx, ptx_len.max(0) as usize),
                std::slice::from_raw_parts(names, n),
                std::slice::from_raw_parts(emulated, n),
            )
        };
        let cnames: Vec<CString> = names
            .iter()
            // SAFETY: as above.
            .map(|&p| unsafe { CStr::from_ptr(p) }.to_owned())
            .collect();
        let device = std::sync::Arc::new(
            gpu::Device::open(ptx, &cnames, emulated)
                .map_err(|e| format!("{}: {e}", m.desc.name))?,
        );
        if let Some(c) = device.cuda() {
            let len = m.desc.weights_len as usize;
            let dst = c.alloc(len);
            if dst.is_null() {
                return Err(format!(
                    "{}: cannot allocate {len} bytes of device memory for the weights",
                    m.desc.name
                ));
            }
            // SAFETY: both regions hold `len` bytes.
            unsafe { std::ptr::copy_nonoverlapping(m.weights_ptr(), dst, len) };
            m.device_weights = Some(dst);
        }
        m.pool.device = Some(device.clone());
        m.device = Some(device);
        Ok(Box::into_raw(Box::new(m)))
    })
}

/// The part of loading shared by CPU and GPU libraries.
///
/// # Safety
/// As [`lpc_rt_load`].
unsafe fn load_model(
    desc: *const u8,
    desc_len: i64,
    graph: GraphFn,
    embedded: *const u8,
    path: *const c_char,
    opts: *const LpcOptions,
) -> Result<Model, String> {
    {
        // SAFETY: see the contract above.
        let d = unsafe { std::slice::from_raw_parts(desc, desc_len.max(0) as usize) };
        let desc = ModelDesc::decode(d)?;
        // SAFETY: as above.
        let opts = unsafe { opts.as_ref() };
        let weights = if !embedded.is_null() {
            // SAFETY: as above; the embedded region is `weights_len` bytes.
            let data = unsafe { std::slice::from_raw_parts(embedded, desc.weights_len as usize) };
            let crc = weights::crc32(data);
            if crc != desc.weights_crc {
                return Err(format!(
                    "embedded weights are corrupt: CRC {crc:08x}, expected {:08x}",
                    desc.weights_crc
                ));
            }
            Weights::Embedded(embedded)
        } else {
            if path.is_null() {
                return Err("lpc_model_load: the weights path is null (this library was compiled without --embed-weights)".into());
            }
            // SAFETY: as above.
            let p = PathBuf::from(
                unsafe { CStr::from_ptr(path) }
                    .to_string_lossy()
                    .into_owned(),
            );
            Weights::Mapped(weights::Mapped::open(
                &p,
                desc.weights_len,
                desc.weights_crc,
            )?)
        };
        let cnames = |l: &[desc::TensorDesc]| -> Vec<CString> {
            l.iter()
                .map(|t| CString::new(t.name.replace('\0', " ")).unwrap_or_default())
                .collect()
        };
        let names = [cnames(&desc.inputs), cnames(&desc.outputs)];
        Ok(Model {
            names,
            desc,
            graph,
            weights,
            workers: std::sync::Arc::new(pool::Pool::new(threads_from(opts))),
            outputs: Vec::new(),
            pool: Pool::default(),
            live: WordMap::default(),
            busy: std::sync::atomic::AtomicBool::new(false),
            device: None,
            device_weights: None,
            profile: Vec::new(),
            profile_text: CString::default(),
        })
    }
}

impl Model {
    /// The weights the graph reads: the mapped file or the embedded data,
    /// or their device-visible copy.
    fn weights_ptr(&self) -> *const u8 {
        if let Some(p) = self.device_weights {
            return p;
        }
        match &self.weights {
            Weights::Mapped(mm) => mm.data().as_ptr(),
            Weights::Embedded(p) => *p,
        }
    }
}

/// Frees a model and the buffers of its last outputs.
///
/// # Safety
/// `m` is null or from [`lpc_rt_load`], not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn lpc_model_free(m: *mut Model) {
    if m.is_null() {
        return;
    }
    // SAFETY: see the contract above.
    let mut m = unsafe { Box::from_raw(m) };
    // The last outputs go back to the pool, which frees everything it holds.
    for (p, bytes) in std::mem::take(&mut m.outputs) {
        m.pool.put(p, bytes);
    }
    if let (Some(p), Some(c)) = (m.device_weights, m.device.as_ref().and_then(|d| d.cuda())) {
        c.free(p);
    }
}

/// Wakes the model's worker threads, parked after about 200 µs without
/// work, and returns once they are spinning (or after 100 ms): a run
/// started within 200 µs then has every thread from its first parallel
/// loop, not only once parked workers wake (tens of microseconds each on a
/// busy host). For benchmarks that flush the caches between runs, and for
/// callers that can wake the threads while they prepare the next input.
/// Does nothing while the model runs on another thread.
///
/// # Safety
/// `m` is null or from [`lpc_rt_load`].
#[no_mangle]
pub unsafe extern "C" fn lpc_model_wake(m: *mut Model) {
    use std::sync::atomic::Ordering;
    if m.is_null() {
        return;
    }
    // As in `lpc_model_run`: the busy flag through the raw pointer, and the
    // model only borrowed once it is ours.
    // SAFETY: `m` is a live model (contract above).
    let busy = unsafe { std::ptr::addr_of!((*m).busy) };
    // SAFETY: as above.
    if unsafe { (*busy).swap(true, Ordering::Acquire) } {
        return;
    }
    // SAFETY: no run holds the model (the flag is set).
    unsafe { (*m).workers.wake() };
    // SAFETY: as above.
    unsafe { (*busy).store(false, Ordering::Release) };
}

/// The message of the last failed call on this thread ("" if none).
#[no_mangle]
pub extern "C" fn lpc_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Checks the inputs against the descriptor; returns the bound symbols.
pub fn check_inputs(desc: &ModelDesc, inputs: &[LpcTensor]) -> Result<Vec<u64>, String> {
    let mut sym: Vec<Option<(u64, usize)>> = vec![None; desc.symbols.len()];
    for (i, (t, d)) in inputs.iter().zip(&desc.inputs).enumerate() {
        // Only an error message needs the declared shape's text.
        let shape = || desc.shape_text(d);
        let what = |m: String| format!("input {i} `{}`: {m}", d.name);
        if t.dtype != d.dtype {
            return Err(what(format!(
                "element type {} (code {}), expected {}",
                desc::dtype::name(t.dtype),
                t.dtype,
                desc::dtype::name(d.dtype)
            )));
        }
        if t.rank < 0 || t.rank as usize != d.dims.len() {
            return Err(what(format!(
                "rank {}, expected {} {}",
                t.rank,
                d.dims.len(),
                shape()
            )));
        }
        let mut elems: u64 = 1;
        for (k, dd) in d.dims.iter().enumerate() {
            let n = t.dims[k];
            if n < 0 {
                return Err(what(format!("dimension {k} is negative ({n})")));
            }
            let n = n as u64;
            match dd {
                DimDesc::Fixed(f) if *f != n => {
                    return Err(what(format!(
                        "dimension {k} is {n}, expected {f} {}",
                        shape()
                    )))
                }
                DimDesc::Sym(s) => {
                    let sd = &desc.symbols[*s as usize];
                    if n > sd.max {
                        return Err(what(format!(
                            "dimension {k} (`{}`) is {n}, above its limit {}",
                            sd.name, sd.max
                        )));
                    }
                    match sym[*s as usize] {
                        Some((m, j)) if m != n => {
                            return Err(what(format!(
                                "dimension {k} (`{}`) is {n}, but input `{}` binds it to {m}",
                                sd.name, desc.inputs[j].name
                            )))
                        }
                        _ => sym[*s as usize] = Some((n, i)),
                    }
                }
                _ => {}
            }
            elems = elems
                .checked_mul(n)
                .ok_or_else(|| what("element count overflows".into()))?;
        }
        if t.data.is_null() && elems > 0 {
            return Err(what("data pointer is null".into()));
        }
    }
    Ok(sym.into_iter().map(|s| s.map_or(0, |s| s.0)).collect())
}

/// Runs the model: checks the inputs, calls the generated graph, and fills
/// `outputs` (data owned by the model until its next run or free).
///
/// # Safety
/// `m` from [`lpc_rt_load`]; `inputs` and `outputs` point at the declared
/// numbers of descriptors (`n_inputs`, `n_outputs` are checked).
#[no_mangle]
pub unsafe extern "C" fn lpc_model_run(
    m: *mut Model,
    inputs: *const LpcTensor,
    n_inputs: i64,
    outputs: *mut LpcTensor,
    n_outputs: i64,
) -> i32 {
    use std::sync::atomic::Ordering;
    if m.is_null() {
        set_error("lpc_model_run: model is null".into());
        return code::BAD_ARGUMENT;
    }
    // The busy flag is reached through the raw pointer only, outside the
    // run's exclusive borrow of the model.
    // SAFETY: `m` is a live model (contract above).
    let busy = unsafe { std::ptr::addr_of!((*m).busy) };
    // SAFETY: as above; no exclusive borrow exists yet.
    if unsafe { (*busy).swap(true, Ordering::Acquire) } {
        set_error("lpc_model_run: the model is already running on another thread".into());
        return code::BAD_ARGUMENT;
    }
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: see the contract above.
        unsafe { run_inner(m, inputs, n_inputs, outputs, n_outputs) }
    }));
    // SAFETY: the run's borrow has ended.
    unsafe { (*busy).store(false, Ordering::Release) };
    match r {
        Ok(Ok(())) => code::OK,
        Ok(Err((c, msg))) => {
            set_error(msg);
            c
        }
        Err(_) => {
            set_error("internal error in the lpc runtime".into());
            code::INTERNAL
        }
    }
}

/// # Safety
/// As [`lpc_model_run`].
unsafe fn run_inner(
    m: *mut Model,
    inputs: *const LpcTensor,
    n_inputs: i64,
    outputs: *mut LpcTensor,
    n_outputs: i64,
) -> Result<(), (i32, String)> {
    let bad = |m: String| (code::BAD_ARGUMENT, m);
    // SAFETY: see the contract of `lpc_model_run` (null checked).
    let Some(m) = (unsafe { m.as_mut() }) else {
        return Err(bad("lpc_model_run: model is null".into()));
    };
    let (ni, no) = (m.desc.inputs.len(), m.desc.outputs.len());
    if inputs.is_null() && ni > 0 || outputs.is_null() && no > 0 {
        return Err(bad(
            "lpc_model_run: inputs or outputs pointer is null".into()
        ));
    }
    if n_inputs != ni as i64 || n_outputs != no as i64 {
        return Err(bad(format!(
            "lpc_model_run: model `{}` takes {ni} inputs and {no} outputs, got {n_inputs} and {n_outputs}",
            m.desc.name
        )));
    }
    let ins: &[LpcTensor] = if ni == 0 {
        &[]
    } else {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(inputs, ni) }
    };
    let symbols = check_inputs(&m.desc, ins)
        .map_err(|e| (code::BAD_INPUT, format!("{}: {e}", m.desc.name)))?;
    // A GPU library's context is made current on this thread first (before
    // the pool moves into the run, so that a failure leaves it in place).
    let cuda = m.device.as_ref().and_then(|d| d.cuda());
    if let Some(c) = cuda {
        c.enter()
            .map_err(|e| (code::RUN_FAILED, format!("{}: {e}", m.desc.name)))?;
    }
    // The previous outputs go back to the pool.
    let mut ctx = RunCtx {
        live: std::mem::take(&mut m.live),
        pool: std::mem::take(&mut m.pool),
        workers: m.workers.clone(),
        error: None,
        symbols,
        device: m.device.clone(),
        in_flight: false,
        profile: RunProfile::default(),
    };
    for (p, bytes) in m.outputs.drain(..) {
        ctx.pool.put(p, bytes);
    }
    let w = m.weights_ptr();
    // With CUDA, kernels cannot read the caller's memory: the inputs are
    // copied into device-visible buffers for the run.
    let mut staged: Vec<LpcTensor> = ins.to_vec();
    let mut copies = Vec::new();
    if cuda.is_some() {
        for t in staged.iter_mut() {
            let n: i64 = t.dims[..t.rank.max(0) as usize].iter().product();
            let bytes = n.max(0) as usize * desc::dtype::size(t.dtype).unwrap_or(1);
            let p = ctx.pool.get(bytes);
            if p.is_null() {
                for (p, bytes) in copies {
                    ctx.pool.put(p, bytes);
                }
                m.pool = std::mem::take(&mut ctx.pool);
                return Err((
                    code::RUN_FAILED,
                    format!("{}: out of device memory", m.desc.name),
                ));
            }
            // SAFETY: the input holds `bytes` bytes (checked against the
            // descriptor), the copy as many.
            unsafe { std::ptr::copy_nonoverlapping(t.data as *const u8, p, bytes) };
            t.data = p as *mut c_void;
            copies.push((p, bytes));
        }
    }
    // SAFETY: the graph was generated for this descriptor, and the inputs
    // were checked against it.
    let rc = unsafe { (m.graph)(&mut ctx, w, staged.as_ptr(), outputs) };
    // The outputs are read by the caller on the host: wait for the device.
    // SAFETY: `ctx` is this run's context.
    let sync = unsafe { lpc_rt_host(&mut ctx) };
    for (p, bytes) in copies {
        ctx.pool.put(p, bytes);
    }
    let result = if rc != 0 || sync != 0 || ctx.error.is_some() {
        Err((
            code::RUN_FAILED,
            format!(
                "{}: {}",
                m.desc.name,
                ctx.error
                    .take()
                    .unwrap_or_else(|| format!("run failed (code {rc})"))
            ),
        ))
    } else {
        // SAFETY: as above; the graph filled `no` descriptors.
        let outs = unsafe { std::slice::from_raw_parts(outputs, no) };
        for o in outs {
            if let Some(b) = ctx.live.remove(&(o.data as usize)) {
                m.outputs.push((o.data as *mut u8, b));
            }
        }
        Ok(())
    };
    for (p, b) in ctx.live.drain() {
        ctx.pool.put(p as *mut u8, b);
    }
    if !ctx.profile.nodes.is_empty() {
        m.profile.resize_with(
            m.profile.len().max(ctx.profile.nodes.len()),
            Default::default,
        );
        for (t, &(label, ns, calls)) in m.profile.iter_mut().zip(&ctx.profile.nodes) {
            if calls > 0 && t.label.is_empty() && !label.is_null() {
                // SAFETY: labels are the library's NUL-terminated constants.
                t.label = unsafe { CStr::from_ptr(label) }
                    .to_string_lossy()
                    .into_owned();
            }
            t.ns += ns;
            t.calls += calls;
        }
    }
    m.pool = std::mem::take(&mut ctx.pool);
    m.live = std::mem::take(&mut ctx.live);
    result
}

/// Marks the start of node `i` (its label `op\tname`, a constant of the
/// library) in a library compiled with `lpc compile --profile`; `i < 0`
/// marks the end of the last node. The time from one mark to the next goes
/// to the node that was running.
///
/// # Safety
/// `ctx` as for [`lpc_rt_alloc`]; `label` is null or NUL-terminated and
/// lives as long as the library.
#[no_mangle]
pub unsafe extern "C" fn lpc_rt_profile(ctx: *mut RunCtx, i: i64, label: *const c_char) {
    let now = std::time::Instant::now();
    // SAFETY: see the contract above.
    let p = &mut unsafe { &mut *ctx }.profile;
    if let Some((j, t)) = p.current.take() {
        let e = &mut p.nodes[j];
        e.1 += now.duration_since(t).as_nanos() as u64;
        e.2 += 1;
    }
    if let Ok(i) = usize::try_from(i) {
        if p.nodes.len() <= i {
            p.nodes.resize(i + 1, (std::ptr::null(), 0, 0));
        }
        p.nodes[i].0 = label;
        p.current = Some((i, now));
    }
}

/// The time per node over the runs so far, as a text table (slowest node
/// first, with each node's share and time per call), for a library compiled
/// with `lpc compile --profile`; "" for one compiled without it (or before
/// a run). Owned by the model until the next call or `lpc_model_free`.
/// Not to be called while the model runs (the runs write what it reads).
///
/// # Safety
/// `m` is null or from [`lpc_rt_load`], not running on another thread.
#[no_mangle]
pub unsafe extern "C" fn lpc_model_profile(m: *mut Model) -> *const c_char {
    // SAFETY: see the contract above.
    let Some(m) = (unsafe { m.as_mut() }) else {
        return c"".as_ptr();
    };
    m.profile_text = CString::new(profile_table(&m.profile)).unwrap_or_default();
    m.profile_text.as_ptr()
}

/// [`lpc_model_profile`]'s table.
fn profile_table(nodes: &[NodeTime]) -> String {
    let total: u64 = nodes.iter().map(|n| n.ns).sum();
    if total == 0 {
        return String::new();
    }
    let mut order: Vec<&NodeTime> = nodes.iter().filter(|n| n.calls > 0).collect();
    order.sort_by_key(|n| std::cmp::Reverse(n.ns));
    let mut t = format!(
        "{:>6} {:>10} {:>7}  {:<16} {}\n",
        "share", "us/call", "calls", "op", "node"
    );
    for n in order {
        let (op, name) = n.label.split_once('\t').unwrap_or(("?", &n.label));
        t += &format!(
            "{:>5.1}% {:>10.2} {:>7}  {:<16} {}\n",
            100.0 * n.ns as f64 / total as f64,
            n.ns as f64 / 1e3 / n.calls as f64,
            n.calls,
            op,
            name
        );
    }
    t
}

/// The bound value of symbol `i` in this run (generated code reads symbolic
/// dimensions from the inputs directly; this is for diagnostics).
///
/// # Safety
/// `ctx` as for [`lpc_rt_alloc`].
#[no_mangle]
pub unsafe extern "C" fn lpc_rt_symbol(ctx: *mut RunCtx, i: i64) -> i64 {
    // SAFETY: see the contract above.
    unsafe { &*ctx }
        .symbols
        .get(i as usize)
        .map_or(-1, |&v| v as i64)
}

fn io_of(m: *const Model, output: bool) -> Option<(&'static Model, usize)> {
    // SAFETY: the C contract: `m` is null or a live model; the reference
    // does not outlive the accessor call that uses it.
    let m: &'static Model = unsafe { m.as_ref()? };
    Some((m, output as usize))
}

/// Number of inputs (-1 for a null model).
///
/// # Safety
/// `m` is null or from [`lpc_rt_load`].
#[no_mangle]
pub unsafe extern "C" fn lpc_model_num_inputs(m: *const Model) -> i64 {
    io_of(m, false).map_or(-1, |(m, _)| m.desc.inputs.len() as i64)
}

/// Number of outputs (-1 for a null model).
///
/// # Safety
/// `m` is null or from [`lpc_rt_load`].
#[no_mangle]
pub unsafe extern "C" fn lpc_model_num_outputs(m: *const Model) -> i64 {
    io_of(m, true).map_or(-1, |(m, _)| m.desc.outputs.len() as i64)
}

fn name_of(m: *const Model, output: bool, i: i64) -> *const c_char {
    io_of(m, output)
        .and_then(|(m, k)| m.names[k].get(usize::try_from(i).ok()?))
        .map_or(std::ptr::null(), |c| c.as_ptr())
}

fn dtype_of(m: *const Model, output: bool, i: i64) -> i32 {
    io_of(m, output)
        .and_then(|(m, _)| {
            let l = if output {
                &m.desc.outputs
            } else {
                &m.desc.inputs
            };
            l.get(usize::try_from(i).ok()?).map(|t| t.dtype)
        })
        .unwrap_or(-1)
}

/// Name of input `i` (null when out of range).
///
/// # Safety
/// `m` is null or from [`lpc_rt_load`].
#[no_mangle]
pub unsafe extern "C" fn lpc_model_input_name(m: *const Model, i: i64) -> *const c_char {
    name_of(m, false, i)
}

/// Name of output `i` (null when out of range).
///
/// # Safety
/// `m` is null or from [`lpc_rt_load`].
#[no_mangle]
pub unsafe extern "C" fn lpc_model_output_name(m: *const Model, i: i64) -> *const c_char {
    name_of(m, true, i)
}

/// Element type code of input `i` (-1 when out of range).
///
/// # Safety
/// `m` is null or from [`lpc_rt_load`].
#[no_mangle]
pub unsafe extern "C" fn lpc_model_input_dtype(m: *const Model, i: i64) -> i32 {
    dtype_of(m, false, i)
}

/// Element type code of output `i` (-1 when out of range).
///
/// # Safety
/// `m` is null or from [`lpc_rt_load`].
#[no_mangle]
pub unsafe extern "C" fn lpc_model_output_dtype(m: *const Model, i: i64) -> i32 {
    dtype_of(m, true, i)
}

/// Rank of input `i` (-1 when out of range).
///
/// # Safety
/// `m` is null or from [`lpc_rt_load`].
#[no_mangle]
pub unsafe extern "C" fn lpc_model_input_rank(m: *const Model, i: i64) -> i32 {
    io_of(m, false)
        .and_then(|(m, _)| m.desc.inputs.get(usize::try_from(i).ok()?))
        .map_or(-1, |t| t.dims.len() as i32)
}

/// Dimension `k` of input `i`: its fixed size, or -1 when symbolic (or out
/// of range).
///
/// # Safety
/// `m` is null or from [`lpc_rt_load`].
#[no_mangle]
pub unsafe extern "C" fn lpc_model_input_dim(m: *const Model, i: i64, k: i32) -> i64 {
    io_of(m, false)
        .and_then(|(m, _)| {
            let t = m.desc.inputs.get(usize::try_from(i).ok()?)?;
            match t.dims.get(usize::try_from(k).ok()?)? {
                DimDesc::Fixed(n) => Some(*n as i64),
                DimDesc::Sym(_) => Some(-1),
            }
        })
        .unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::{lpc_rt_scratch, Pool, WordMap, POOL_SIZES};

    #[test]
    fn word_maps_find_remove_and_drain_their_keys() {
        let mut m: WordMap<usize> = WordMap::default();
        for k in 0..10 {
            m.insert(64 * k, k);
        }
        assert_eq!(m.remove(&(64 * 3)), Some(3));
        assert_eq!(m.remove(&(64 * 3)), None);
        *m.get_mut(&(64 * 9)).unwrap() += 100;
        assert_eq!(m.get_mut(&(64 * 9)).copied(), Some(109));
        *m.entry_or_default(7) += 1;
        *m.entry_or_default(7) += 1;
        let mut all: Vec<_> = m.drain().collect();
        all.sort();
        assert_eq!(all.len(), 10);
        assert!(all.contains(&(7, 2)) && all.contains(&(64 * 9, 109)));
        assert!(m.drain().next().is_none());
    }

    #[test]
    fn the_pool_reuses_sizes_and_frees_the_oldest_past_its_limit() {
        let mut pool = Pool::default();
        let a = pool.get(100);
        pool.put(a, 100);
        assert_eq!(pool.get(100), a);
        pool.put(a, 100);
        // Sizes that never come back: the oldest go, the pool stays bounded.
        for i in 1..=POOL_SIZES + 10 {
            let p = pool.get(100 + 64 * i);
            assert!(!p.is_null());
            pool.put(p, 100 + 64 * i);
        }
        assert_eq!(pool.free.0.len(), POOL_SIZES);
        assert!(pool.free.get_mut(&100).is_none());
        assert!(pool.free.get_mut(&(100 + 64 * (POOL_SIZES + 10))).is_some());
    }

    #[test]
    fn scratch_slots_are_aligned_kept_and_grown_per_thread() {
        let a = lpc_rt_scratch(0, 100);
        let b = lpc_rt_scratch(1, 100);
        assert!(!a.is_null() && !b.is_null() && a != b);
        assert!((a as usize).is_multiple_of(64));
        // SAFETY: slot 0 holds at least 100 bytes.
        unsafe { a.write_bytes(7, 100) };
        // Kept: the same buffer for a size that fits.
        assert_eq!(lpc_rt_scratch(0, 64), a);
        // Grown: a larger request still gets a usable, aligned buffer.
        let c = lpc_rt_scratch(0, 1 << 20);
        assert!(!c.is_null() && (c as usize).is_multiple_of(64));
        // SAFETY: slot 0 now holds at least 1 MiB.
        unsafe { c.add((1 << 20) - 1).write(1) };
        // Another thread has its own slots.
        let other = std::thread::spawn(|| lpc_rt_scratch(0, 100) as usize)
            .join()
            .expect("thread");
        assert_ne!(other, c as usize);
        assert!(lpc_rt_scratch(2, 8).is_null());
        assert!(lpc_rt_scratch(-1, 8).is_null());
    }
}
