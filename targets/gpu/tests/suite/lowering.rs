//! The MLIR tool chain end to end, no GPU needed: a GPU kernel in the `gpu`,
//! `memref` and `arith` dialects lowered through NVVM to PTX text.

use lpc_target_gpu::{GpuCompiler, GpuError};

const SCALE_KERNEL: &str = r#"
module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @lpc_scale(%x: memref<?xf32>, %y: memref<?xf32>, %a: f32, %n: index) kernel {
      %bid = gpu.block_id x
      %bdim = gpu.block_dim x
      %tid = gpu.thread_id x
      %base = arith.muli %bid, %bdim : index
      %i = arith.addi %base, %tid : index
      %in = arith.cmpi ult, %i, %n : index
      scf.if %in {
        %v = memref.load %x[%i] : memref<?xf32>
        %r = arith.mulf %v, %a : f32
        memref.store %r, %y[%i] : memref<?xf32>
      }
      gpu.return
    }
  }
}
"#;

#[test]
fn gpu_kernel_lowers_to_ptx() {
    let c = GpuCompiler::new();
    let ptx = c.lower_to_ptx(SCALE_KERNEL, "sm_90").unwrap();
    assert_eq!(ptx.len(), 1);
    assert_eq!(ptx[0].name, "kernels");
    let text = &ptx[0].ptx;
    assert!(text.contains(".target sm_90"), "{text}");
    assert!(text.contains(".entry lpc_scale"), "{text}");
    assert!(text.contains("mul.rn.f32"), "{text}");
}

#[test]
fn bad_input_is_an_error_not_an_abort() {
    let c = GpuCompiler::new();
    assert!(matches!(
        c.lower_to_ptx(SCALE_KERNEL, "sm_100"),
        Err(GpuError::Arch(_))
    ));
    let e = c
        .lower_to_ptx("module { this is not mlir }", "sm_90")
        .unwrap_err();
    assert!(matches!(e, GpuError::Parse(_)), "{e}");
}
