//! Running a compiled model (`lpc run model.so`, the test suites): the
//! library is loaded with libloading and driven through its C API, exactly
//! as a C program would.

use lpc_ir::interp::TensorValue;
use lpc_ir::{DType, Tensor};
use lpc_rt::{LpcOptions, LpcTensor, MAX_RANK};
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;

type LoadFn = unsafe extern "C" fn(*const c_char, *const LpcOptions) -> *mut c_void;
type RunFn = unsafe extern "C" fn(*mut c_void, *const LpcTensor, i64, *mut LpcTensor, i64) -> i32;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type ErrFn = unsafe extern "C" fn() -> *const c_char;
type CountFn = unsafe extern "C" fn(*const c_void) -> i64;
type NameFn = unsafe extern "C" fn(*const c_void, i64) -> *const c_char;
type DtypeFn = unsafe extern "C" fn(*const c_void, i64) -> i32;
type DimFn = unsafe extern "C" fn(*const c_void, i64, i32) -> i64;
type ProfileFn = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type WakeFn = unsafe extern "C" fn(*mut c_void);

/// A loaded library and model handle.
#[derive(Debug)]
pub struct NativeModel {
    path: String,
    handle: *mut c_void,
    run: RunFn,
    free: FreeFn,
    err: ErrFn,
    /// `lpc_model_profile` (libraries from before it lack it).
    profile: Option<ProfileFn>,
    /// `lpc_model_wake` (libraries from before it lack it).
    wake: Option<WakeFn>,
    /// Input and output names and element types, in order.
    pub inputs: Vec<(String, DType)>,
    /// Declared input dimensions (`None`: symbolic).
    pub input_dims: Vec<Vec<Option<usize>>>,
    pub outputs: Vec<(String, DType)>,
    _lib: libloading::Library,
}

fn sym<T: Copy>(lib: &libloading::Library, path: &str, name: &str) -> Result<T, String> {
    // SAFETY: the symbol types are the C API's (`model.h`).
    unsafe { lib.get::<T>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| format!("{path}: not an lpc library ({name}: {e})"))
}

impl NativeModel {
    /// Loads `lib` with the weights beside it (`NAME.lpcw`), or embedded
    /// ones when there is no such file. `threads` 0: the library's default.
    pub fn load(lib: &Path, threads: i32) -> Result<Self, String> {
        let path = lib.display().to_string();
        // A bare file name would be searched for on the library path.
        let abs = std::path::absolute(lib).map_err(|e| format!("{path}: {e}"))?;
        // SAFETY: loading runs the library's initializers; lpc libraries
        // have none beyond libc's.
        let l = unsafe { libloading::Library::new(&abs) }.map_err(|e| format!("{path}: {e}"))?;
        let load: LoadFn = sym(&l, &path, "lpc_model_load")?;
        let run: RunFn = sym(&l, &path, "lpc_model_run")?;
        let free: FreeFn = sym(&l, &path, "lpc_model_free")?;
        let err: ErrFn = sym(&l, &path, "lpc_last_error")?;
        let ni: CountFn = sym(&l, &path, "lpc_model_num_inputs")?;
        let no: CountFn = sym(&l, &path, "lpc_model_num_outputs")?;
        let iname: NameFn = sym(&l, &path, "lpc_model_input_name")?;
        let oname: NameFn = sym(&l, &path, "lpc_model_output_name")?;
        let idt: DtypeFn = sym(&l, &path, "lpc_model_input_dtype")?;
        let odt: DtypeFn = sym(&l, &path, "lpc_model_output_dtype")?;
        let irank: DtypeFn = sym(&l, &path, "lpc_model_input_rank")?;
        let idim: DimFn = sym(&l, &path, "lpc_model_input_dim")?;
        let profile: Option<ProfileFn> = sym(&l, &path, "lpc_model_profile").ok();
        let wake: Option<WakeFn> = sym(&l, &path, "lpc_model_wake").ok();
        let w = lib.with_extension("lpcw");
        let wc = if w.exists() {
            Some(CString::new(w.display().to_string()).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let opts = LpcOptions {
            num_threads: threads,
        };
        // SAFETY: C API calls with valid arguments.
        let handle = unsafe { load(wc.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()), &opts) };
        if handle.is_null() {
            // SAFETY: lpc_last_error returns a NUL-terminated string.
            let m = unsafe { CStr::from_ptr(err()) }
                .to_string_lossy()
                .into_owned();
            return Err(format!("{path}: {m}"));
        }
        let list = |count: CountFn, name: NameFn, dt: DtypeFn| -> Vec<(String, DType)> {
            // SAFETY: `handle` is live; indices are in range.
            let n = unsafe { count(handle) };
            (0..n)
                .map(|i| unsafe {
                    let s = CStr::from_ptr(name(handle, i))
                        .to_string_lossy()
                        .into_owned();
                    (
                        s,
                        DType::from_onnx_code(dt(handle, i)).unwrap_or(DType::F32),
                    )
                })
                .collect()
        };
        let inputs = list(ni, iname, idt);
        let input_dims = (0..inputs.len() as i64)
            .map(|i| {
                // SAFETY: `handle` is live; indices are in range.
                let r = unsafe { irank(handle, i) };
                (0..r)
                    .map(|k| usize::try_from(unsafe { idim(handle, i, k) }).ok())
                    .collect()
            })
            .collect();
        let outputs = list(no, oname, odt);
        Ok(Self {
            path,
            handle,
            run,
            free,
            err,
            profile,
            wake,
            inputs,
            input_dims,
            outputs,
            _lib: l,
        })
    }

    fn last_error(&self) -> String {
        // SAFETY: as above.
        unsafe { CStr::from_ptr((self.err)()) }
            .to_string_lossy()
            .into_owned()
    }

    /// Runs on raw descriptors (the C API as is: tests of bad input use it).
    /// Returns the C API's code.
    ///
    /// # Safety
    /// The descriptors' data pointers must be valid for their dims and types.
    pub unsafe fn run_raw(&self, ins: &[LpcTensor], outs: &mut [LpcTensor]) -> i32 {
        // SAFETY: per the contract.
        unsafe {
            (self.run)(
                self.handle,
                ins.as_ptr(),
                ins.len() as i64,
                outs.as_mut_ptr(),
                outs.len() as i64,
            )
        }
    }

    /// The time per node over the runs so far (`lpc_model_profile`): a
    /// table for a library compiled with `lpc compile --profile`, else
    /// `None`.
    pub fn profile(&self) -> Option<String> {
        let f = self.profile?;
        // SAFETY: `handle` is live; the text is NUL-terminated.
        let t = unsafe { CStr::from_ptr(f(self.handle)) }
            .to_string_lossy()
            .into_owned();
        (!t.is_empty()).then_some(t)
    }

    /// Wakes the library's worker threads (`lpc_model_wake`), so that a
    /// run right after starts on all of them.
    pub fn wake(&self) {
        if let Some(f) = self.wake {
            // SAFETY: `handle` is live.
            unsafe { f(self.handle) }
        }
    }

    /// The error message of the last failed call.
    pub fn error(&self) -> String {
        self.last_error()
    }

    /// Runs on values given in input order; outputs copied out, in order.
    pub fn run(&self, inputs: &[TensorValue]) -> Result<Vec<TensorValue>, String> {
        let tensors: Vec<Tensor> = inputs.iter().map(|v| v.to_tensor()).collect();
        Ok(self
            .run_tensors(&tensors)?
            .iter()
            .map(TensorValue::from_tensor)
            .collect())
    }

    /// [`NativeModel::run`] on tensors (their bytes passed as they are):
    /// what `lpc run --repeat` times, outputs copied out as the library
    /// wrote them.
    pub fn run_tensors(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>, String> {
        let mut descs = Vec::with_capacity(tensors.len());
        for t in tensors {
            if t.dims.len() > MAX_RANK {
                return Err(format!(
                    "{}: input of rank {} > {MAX_RANK}",
                    self.path,
                    t.dims.len()
                ));
            }
            let mut dims = [0i64; MAX_RANK];
            for (d, &x) in dims.iter_mut().zip(&t.dims) {
                *d = x as i64;
            }
            descs.push(LpcTensor {
                dtype: t.dtype.onnx_code(),
                rank: t.dims.len() as i32,
                dims,
                data: t.data.as_ptr() as *mut c_void,
            });
        }
        let mut outs = vec![
            LpcTensor {
                dtype: 0,
                rank: 0,
                dims: [0; MAX_RANK],
                data: std::ptr::null_mut(),
            };
            self.outputs.len()
        ];
        // SAFETY: descriptors point into `tensors`, alive for the call.
        let rc = unsafe { self.run_raw(&descs, &mut outs) };
        if rc != 0 {
            return Err(format!("{}: {}", self.path, self.last_error()));
        }
        outs.iter()
            .map(|o| {
                let dt = DType::from_onnx_code(o.dtype)
                    .ok_or_else(|| format!("{}: output of unknown type {}", self.path, o.dtype))?;
                let dims: Vec<usize> = o.dims[..o.rank as usize]
                    .iter()
                    .map(|&d| d as usize)
                    .collect();
                let n = dt.size() * dims.iter().product::<usize>();
                let bytes = if n == 0 {
                    Vec::new()
                } else {
                    // SAFETY: the library filled `data` with `n` bytes, owned
                    // by the model until the next run.
                    unsafe { std::slice::from_raw_parts(o.data as *const u8, n) }.to_vec()
                };
                Tensor::new(dt, dims, bytes.into())
                    .ok_or_else(|| format!("{}: output size mismatch", self.path))
            })
            .collect()
    }
}

impl Drop for NativeModel {
    fn drop(&mut self) {
        // SAFETY: the handle came from lpc_model_load and is freed once.
        unsafe { (self.free)(self.handle) };
    }
}
