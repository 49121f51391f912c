//! Single-op graphs for kernel benchmarks and tests: one `lpc.qgemm` (or
//! `lpc.linear`) over given weights, compiled like any model, and
//! [`OpLib`], which builds, loads and runs such a graph through the C API.

use crate::artifact::{build, BuildOptions, Emit};
use crate::{codegen, CpuTarget};
use lpc_ir::{Attr, DType, Dim, Graph, NewNode, Tensor, Type};
use lpc_rt::{LpcOptions, LpcTensor, MAX_RANK};
use lpc_runtime::formats::{rowscale, AxisLayout};
use lpc_runtime::{hadamard, Format};
use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CString};
use std::path::Path;

/// What a `qgemm` graph computes besides the product.
#[derive(Clone, Debug, Default)]
pub struct QgemmSpec {
    pub rotate: usize,
    pub scaled: bool,
    pub bias: Option<Vec<f32>>,
    pub residual: bool,
    pub activation: Option<String>,
}

/// `y[m, n] = qgemm(x[m, k], W)` with `w` given as `[n, k]` rows (rotated,
/// scaled and packed here, as the compiler's passes would). Returns the
/// graph and the packed rows with their exponents (for references).
pub fn qgemm_graph(
    f: Format,
    m: Dim,
    k: usize,
    n: usize,
    mut w: Vec<f32>,
    spec: &QgemmSpec,
) -> (Graph, Vec<u8>, Vec<i32>) {
    if spec.rotate > 0 {
        hadamard::rotate_rows(&mut w, k, spec.rotate);
    }
    let wl = AxisLayout::new(&[n, k], 1, f.block_len());
    let wexp = if spec.scaled {
        rowscale::scale_rows(&mut w, &wl)
    } else {
        vec![0; n]
    };
    let l = f.layout(&[n, k], -1, true).expect("valid layout");
    let wp = f.quantize(&w, &l).expect("quantizable");
    drop(w);
    let bpr = wp.len() / n.max(1);
    let mut g = Graph::new("qgemm");
    let xi = g.add_input(
        "x",
        Some(Type::new(DType::F32, vec![m.clone(), Dim::Fixed(k)])),
    );
    let wc = g.add_const(
        "w",
        Tensor::new(DType::U8, vec![n, bpr], wp.clone().into()).expect("sized"),
    );
    let mut inputs = vec![Some(xi), Some(wc)];
    if spec.scaled {
        let b: Vec<u8> = wexp.iter().flat_map(|e| e.to_le_bytes()).collect();
        let t = Tensor::new(DType::I32, vec![n], b.into()).expect("sized");
        inputs.push(Some(g.add_const("e", t)));
    }
    if let Some(b) = &spec.bias {
        inputs.push(Some(g.add_const("b", Tensor::from_f32(vec![n], b))));
    }
    if spec.residual {
        let t = Type::new(DType::F32, vec![m.clone(), Dim::Fixed(n)]);
        inputs.push(Some(g.add_input("r", Some(t))));
    }
    let mut attrs = BTreeMap::new();
    let mut set = |k: &str, v: Attr| {
        attrs.insert(k.to_string(), v);
    };
    set("k", Attr::Int(k as i64));
    set("parts", Attr::Int(1));
    set("wformat", Attr::String(f.name().into()));
    set("wmode", Attr::String(f.mode_name().into()));
    set("aformat", Attr::String(f.name().into()));
    set("amode", Attr::String(f.mode_name().into()));
    set("rotate", Attr::Int(spec.rotate as i64));
    set("wscale", Attr::Int(spec.scaled as i64));
    set("bias", Attr::Int(spec.bias.is_some() as i64));
    set("residual", Attr::Int(spec.residual as i64));
    if spec.scaled {
        set("ascale", Attr::String("pow2".into()));
    }
    if let Some(a) = &spec.activation {
        set("activation", Attr::String(a.clone()));
    }
    let (_, outs) = g.add_node(
        NewNode {
            name: "q".into(),
            op: "lpc.qgemm".into(),
            attrs,
            inputs,
        },
        vec![(
            "y".into(),
            Some(Type::new(DType::F32, vec![m, Dim::Fixed(n)])),
        )],
    );
    g.outputs = outs;
    (g, wp, wexp)
}

/// `y[m, n] = x[m, k] · W[k, n]` in f32 (`lpc.linear`), the plain baseline.
pub fn linear_graph(m: Dim, k: usize, n: usize, w: &[f32]) -> Graph {
    let mut g = Graph::new("linear");
    let xi = g.add_input(
        "x",
        Some(Type::new(DType::F32, vec![m.clone(), Dim::Fixed(k)])),
    );
    let wc = g.add_const("w", Tensor::from_f32(vec![k, n], w));
    let (_, outs) = g.add_node(
        NewNode {
            name: "l".into(),
            op: "lpc.linear".into(),
            attrs: BTreeMap::new(),
            inputs: vec![Some(xi), Some(wc)],
        },
        vec![(
            "y".into(),
            Some(Type::new(DType::F32, vec![m, Dim::Fixed(n)])),
        )],
    );
    g.outputs = outs;
    g
}

/// A compiled single-op library, loaded and driven through its C API: the
/// harness of the kernel benchmark and tests.
pub struct OpLib {
    h: *mut c_void,
    run: RunFn,
    free: unsafe extern "C" fn(*mut c_void),
    wake: unsafe extern "C" fn(*mut c_void),
    /// Bytes of constants (weights) the graph carries.
    pub weight_bytes: usize,
    // Dropped last: the functions above live in it.
    _lib: libloading::Library,
}

impl std::fmt::Debug for OpLib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpLib({} weight bytes)", self.weight_bytes)
    }
}

type LoadFn = unsafe extern "C" fn(*const c_char, *const LpcOptions) -> *mut c_void;
type RunFn = unsafe extern "C" fn(*mut c_void, *const LpcTensor, i64, *mut LpcTensor, i64) -> i32;

impl OpLib {
    /// Compiles `g` for `target` into `dir/NAME.so` (weights in `NAME.lpcw`)
    /// and loads it with `threads` workers. Names must differ between
    /// libraries of one process: dlopen caches by path.
    pub fn build(
        g: &Graph,
        target: CpuTarget,
        dir: &Path,
        name: &str,
        threads: i32,
    ) -> Result<Self, String> {
        let so = dir.join(format!("{name}.so"));
        let weight_bytes = g
            .value_ids()
            .filter_map(|v| g.constant(v))
            .map(|t| t.data.len())
            .sum();
        let opts = BuildOptions {
            target,
            opt: inkwell::OptimizationLevel::Default,
            codegen: codegen::Options {
                name: name.into(),
                ..Default::default()
            },
            emit: Emit::Lib,
        };
        build(g, &opts, &so).map_err(|e| e.to_string())?;
        let w = CString::new(so.with_extension("lpcw").display().to_string())
            .map_err(|e| e.to_string())?;
        // SAFETY: an lpc library exports the C API with these types.
        unsafe {
            let lib = libloading::Library::new(&so).map_err(|e| e.to_string())?;
            let load: LoadFn = *lib.get(b"lpc_model_load").map_err(|e| e.to_string())?;
            let run: RunFn = *lib.get(b"lpc_model_run").map_err(|e| e.to_string())?;
            let free = *lib.get(b"lpc_model_free").map_err(|e| e.to_string())?;
            let wake = *lib.get(b"lpc_model_wake").map_err(|e| e.to_string())?;
            let h = load(
                w.as_ptr(),
                &LpcOptions {
                    num_threads: threads,
                },
            );
            if h.is_null() {
                return Err(format!("{}: the library did not load", so.display()));
            }
            Ok(Self {
                h,
                run,
                free,
                wake,
                weight_bytes,
                _lib: lib,
            })
        }
    }

    /// Wakes the library's worker threads (`lpc_model_wake`): after a
    /// cache flush, so that the next run finds them spinning, as a layer
    /// does after the one before it.
    pub fn wake(&self) {
        // SAFETY: `h` is live.
        unsafe { (self.wake)(self.h) }
    }

    /// Runs on f32 inputs given as (data, shape); returns the first output.
    pub fn run(&self, inputs: &[(&[f32], &[usize])]) -> Result<Vec<f32>, String> {
        let (p, n) = self.run_in_place(inputs)?;
        // SAFETY: the library filled the output with `n` f32 values.
        Ok(unsafe { std::slice::from_raw_parts(p, n) }.to_vec())
    }

    /// [`Self::run`] without copying the output out (for timing): its data
    /// pointer and length, valid until the next run.
    pub fn run_in_place(
        &self,
        inputs: &[(&[f32], &[usize])],
    ) -> Result<(*const f32, usize), String> {
        let desc = |dims: &[usize], p: *const f32| {
            let mut d = [0i64; MAX_RANK];
            for (a, &b) in d.iter_mut().zip(dims) {
                *a = b as i64;
            }
            LpcTensor {
                dtype: 1,
                rank: dims.len() as i32,
                dims: d,
                data: p as *mut c_void,
            }
        };
        let ins: Vec<LpcTensor> = inputs.iter().map(|(x, s)| desc(s, x.as_ptr())).collect();
        let mut out = [desc(&[], std::ptr::null())];
        // SAFETY: the descriptors point at live slices of their shapes.
        let rc = unsafe { (self.run)(self.h, ins.as_ptr(), ins.len() as i64, out.as_mut_ptr(), 1) };
        if rc != 0 {
            return Err(format!("lpc_model_run returned {rc}"));
        }
        let n: usize = out[0].dims[..out[0].rank as usize].iter().product::<i64>() as usize;
        Ok((out[0].data as *const f32, n))
    }
}

impl Drop for OpLib {
    fn drop(&mut self) {
        // SAFETY: loaded in `build`, freed once.
        unsafe { (self.free)(self.h) };
    }
}

pub use lpc_rt::cache::{llc_bytes, CacheFlush};
