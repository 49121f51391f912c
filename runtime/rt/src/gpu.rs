//! The device side of libraries compiled with `--target cuda`.
//!
//! Such a library holds the host schedule (the same generated graph function
//! as the CPU path, where each op with a GPU kernel became a launch), the
//! kernels as PTX text, and the same kernels compiled for the CPU. At load,
//! `LPC_DEVICE` picks where kernels run:
//!
//! - `cuda` (default): the CUDA driver is opened at run time
//!   (`dlopen("libcuda.so.1")`; nothing from a CUDA toolkit is needed to
//!   build or link), the PTX is JIT-compiled by `cuModuleLoadData`, every
//!   buffer (weights, inputs, intermediates, outputs) is CUDA managed memory,
//!   so host-side ops of the schedule read and write the same pointers; the
//!   runtime synchronizes before any host-side op that follows a launch.
//! - `emulate`: the kernels' CPU build runs each launch's work items in
//!   order on the calling thread: the whole GPU schedule, argument passing
//!   included, on a machine without a GPU (how it is tested here).
//!
//! A launch passes `argv`, one pointer per kernel parameter at the LLVM
//! level (the item count, then five words per buffer, then scalars): exactly
//! `cuLaunchKernel`'s `kernelParams`, and what the emulated kernels' packed
//! entry points read.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};

/// A packed entry point of an emulated kernel.
pub type PackedFn = unsafe extern "C" fn(argv: *mut *mut c_void);

type CuResult = c_int;
type CuDevice = c_int;
type CuContext = *mut c_void;
type CuModule = *mut c_void;
type CuFunction = *mut c_void;
type CuDevicePtr = u64;

/// Threads per block of every launch (kernels are 1-D over work items).
pub const BLOCK: u64 = 256;

/// The CUDA driver entry points lpc uses.
struct Api {
    _lib: libloading::Library,
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    device_get_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    primary_ctx_retain: unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult,
    primary_ctx_release: unsafe extern "C" fn(CuDevice) -> CuResult,
    ctx_set_current: unsafe extern "C" fn(CuContext) -> CuResult,
    ctx_synchronize: unsafe extern "C" fn() -> CuResult,
    module_load_data: unsafe extern "C" fn(*mut CuModule, *const c_void) -> CuResult,
    module_unload: unsafe extern "C" fn(CuModule) -> CuResult,
    module_get_function: unsafe extern "C" fn(*mut CuFunction, CuModule, *const c_char) -> CuResult,
    #[allow(clippy::type_complexity)]
    launch_kernel: unsafe extern "C" fn(
        CuFunction,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        *mut c_void,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
    mem_alloc_managed: unsafe extern "C" fn(*mut CuDevicePtr, usize, c_uint) -> CuResult,
    mem_free: unsafe extern "C" fn(CuDevicePtr) -> CuResult,
    get_error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
}

/// An open CUDA device with the model's module loaded.
pub struct Cuda {
    api: Api,
    device: CuDevice,
    ctx: CuContext,
    module: CuModule,
    functions: Vec<CuFunction>,
}

// SAFETY: the driver's handles may be used from any thread once the context
// is made current there (`enter` does it at the start of every run).
unsafe impl Send for Cuda {}
// SAFETY: as above; lpc runs one call per model at a time.
unsafe impl Sync for Cuda {}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("device", &self.device)
            .field("kernels", &self.functions.len())
            .finish()
    }
}

impl Cuda {
    fn check(&self, r: CuResult, what: &str) -> Result<(), String> {
        check(&self.api, r, what)
    }

    /// Opens the driver and device 0, loads the PTX and finds every kernel.
    pub fn open(ptx: &[u8], names: &[CString]) -> Result<Self, String> {
        // SAFETY: loading the system's CUDA driver library, whose
        // initializers are the driver's own.
        let lib = unsafe { libloading::Library::new("libcuda.so.1") }.map_err(|e| {
            format!(
                "this library runs its kernels on an NVIDIA GPU, but the CUDA driver \
                 (libcuda.so.1) cannot be loaded: {e}; set LPC_DEVICE=emulate to run \
                 the same kernels on the CPU"
            )
        })?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol is the driver API function of that name,
                // with the signature of the field it is stored in.
                *unsafe { lib.get($name) }.map_err(|e| {
                    format!(
                        "the CUDA driver lacks {}: {e}",
                        String::from_utf8_lossy($name)
                    )
                })?
            };
        }
        let api = Api {
            init: sym!(b"cuInit"),
            device_get_count: sym!(b"cuDeviceGetCount"),
            device_get: sym!(b"cuDeviceGet"),
            primary_ctx_retain: sym!(b"cuDevicePrimaryCtxRetain"),
            primary_ctx_release: sym!(b"cuDevicePrimaryCtxRelease_v2"),
            ctx_set_current: sym!(b"cuCtxSetCurrent"),
            ctx_synchronize: sym!(b"cuCtxSynchronize"),
            module_load_data: sym!(b"cuModuleLoadData"),
            module_unload: sym!(b"cuModuleUnload"),
            module_get_function: sym!(b"cuModuleGetFunction"),
            launch_kernel: sym!(b"cuLaunchKernel"),
            mem_alloc_managed: sym!(b"cuMemAllocManaged"),
            mem_free: sym!(b"cuMemFree_v2"),
            get_error_string: sym!(b"cuGetErrorString"),
            _lib: lib,
        };
        // SAFETY: driver calls with valid out-pointers, in the documented
        // order (init, device, context, module).
        unsafe {
            check(&api, (api.init)(0), "cuInit")?;
            let mut n = 0;
            check(&api, (api.device_get_count)(&mut n), "cuDeviceGetCount")?;
            if n < 1 {
                return Err("no CUDA device is visible (cuDeviceGetCount = 0)".into());
            }
            let mut device = 0;
            check(&api, (api.device_get)(&mut device, 0), "cuDeviceGet")?;
            let mut ctx = std::ptr::null_mut();
            check(
                &api,
                (api.primary_ctx_retain)(&mut ctx, device),
                "cuDevicePrimaryCtxRetain",
            )?;
            let mut cuda = Cuda {
                api,
                device,
                ctx,
                module: std::ptr::null_mut(),
                functions: Vec::new(),
            };
            cuda.enter()?;
            // The PTX must be NUL-terminated.
            let mut text = ptx.to_vec();
            if text.last() != Some(&0) {
                text.push(0);
            }
            let mut module = std::ptr::null_mut();
            cuda.check(
                (cuda.api.module_load_data)(&mut module, text.as_ptr() as *const c_void),
                "cuModuleLoadData (JIT-compiling the library's PTX)",
            )?;
            cuda.module = module;
            for n in names {
                let mut f = std::ptr::null_mut();
                cuda.check(
                    (cuda.api.module_get_function)(&mut f, module, n.as_ptr()),
                    &format!("cuModuleGetFunction({})", n.to_string_lossy()),
                )?;
                cuda.functions.push(f);
            }
            Ok(cuda)
        }
    }

    /// Makes the model's context current on the calling thread.
    pub fn enter(&self) -> Result<(), String> {
        // SAFETY: `ctx` is the retained primary context.
        self.check(
            unsafe { (self.api.ctx_set_current)(self.ctx) },
            "cuCtxSetCurrent",
        )
    }

    /// Waits for every launch and reports a kernel fault.
    pub fn synchronize(&self) -> Result<(), String> {
        // SAFETY: a context is current (`enter`).
        self.check(unsafe { (self.api.ctx_synchronize)() }, "cuCtxSynchronize")
    }

    /// Launches kernel `k` over `count` work items.
    ///
    /// # Safety
    /// `argv` holds one valid pointer per kernel parameter.
    pub unsafe fn launch(
        &self,
        k: usize,
        count: u64,
        argv: *mut *mut c_void,
    ) -> Result<(), String> {
        let f = *self
            .functions
            .get(k)
            .ok_or_else(|| format!("no kernel {k}"))?;
        let grid = count.div_ceil(BLOCK);
        if grid > i32::MAX as u64 {
            return Err(format!("{count} work items exceed one launch"));
        }
        // SAFETY: see the contract above; the function belongs to the
        // loaded module.
        let r = unsafe {
            (self.api.launch_kernel)(
                f,
                grid as c_uint,
                1,
                1,
                BLOCK as c_uint,
                1,
                1,
                0,
                std::ptr::null_mut(),
                argv,
                std::ptr::null_mut(),
            )
        };
        self.check(r, "cuLaunchKernel")
    }

    /// Managed memory (host and device share the pointer).
    pub fn alloc(&self, bytes: usize) -> *mut u8 {
        let mut p: CuDevicePtr = 0;
        // SAFETY: a valid out-pointer; 1 = CU_MEM_ATTACH_GLOBAL.
        let r = unsafe { (self.api.mem_alloc_managed)(&mut p, bytes.max(1), 1) };
        if r != 0 {
            return std::ptr::null_mut();
        }
        p as *mut u8
    }

    /// Frees memory from [`Cuda::alloc`].
    pub fn free(&self, p: *mut u8) {
        // SAFETY: `p` came from `cuMemAllocManaged`.
        unsafe { (self.api.mem_free)(p as CuDevicePtr) };
    }
}

impl Drop for Cuda {
    fn drop(&mut self) {
        // SAFETY: the module and context were created by `open`.
        unsafe {
            if !self.module.is_null() {
                (self.api.module_unload)(self.module);
            }
            (self.api.primary_ctx_release)(self.device);
        }
    }
}

fn check(api: &Api, r: CuResult, what: &str) -> Result<(), String> {
    if r == 0 {
        return Ok(());
    }
    let mut s: *const c_char = std::ptr::null();
    // SAFETY: a valid out-pointer; the string is static in the driver.
    let name = unsafe {
        if (api.get_error_string)(r, &mut s) == 0 && !s.is_null() {
            CStr::from_ptr(s).to_string_lossy().into_owned()
        } else {
            "unknown error".into()
        }
    };
    Err(format!("{what} failed: CUDA error {r} ({name})"))
}

/// Where a GPU library's kernels run.
#[derive(Debug)]
pub enum Device {
    Cuda(Cuda),
    /// The kernels' CPU build, one packed entry point per kernel.
    Emulate(Vec<PackedFn>),
}

impl Device {
    /// The device `LPC_DEVICE` asks for (`cuda` by default).
    pub fn open(ptx: &[u8], names: &[CString], emulated: &[PackedFn]) -> Result<Self, String> {
        match std::env::var("LPC_DEVICE").as_deref() {
            Ok("emulate") => Ok(Device::Emulate(emulated.to_vec())),
            Ok("cuda") | Err(_) => Cuda::open(ptx, names).map(Device::Cuda),
            Ok(other) => Err(format!(
                "LPC_DEVICE=`{other}`: expected `cuda` or `emulate`"
            )),
        }
    }

    pub fn cuda(&self) -> Option<&Cuda> {
        match self {
            Device::Cuda(c) => Some(c),
            Device::Emulate(_) => None,
        }
    }

    /// Runs kernel `k` over `count` items (asynchronously on a GPU).
    ///
    /// # Safety
    /// `argv` holds one valid pointer per kernel parameter, the first to the
    /// item count.
    pub unsafe fn launch(
        &self,
        k: usize,
        count: u64,
        argv: *mut *mut c_void,
    ) -> Result<(), String> {
        match self {
            // SAFETY: see the contract above.
            Device::Cuda(c) => unsafe { c.launch(k, count, argv) },
            Device::Emulate(table) => {
                let f = table.get(k).ok_or_else(|| format!("no kernel {k}"))?;
                // SAFETY: the packed entry point reads exactly these slots.
                unsafe { f(argv) };
                Ok(())
            }
        }
    }
}
