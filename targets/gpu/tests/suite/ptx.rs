//! Every kernel family lowers to PTX for sm_90 through MLIR's NVVM pipeline,
//! with no call into libdevice (which only a CUDA toolkit has), and the
//! MLIR of representative kernels is pinned by snapshots.

use lpc_ir::DType;
use lpc_runtime::Format;
use lpc_target_gpu::kernel::{gpu_module, Kernel};
use lpc_target_gpu::kernels::{elementwise, nn, qgemm, shape};
use lpc_target_gpu::GpuCompiler;

fn mx() -> Format {
    Format::parse("mxfp4", None, None).unwrap()
}

fn rms_norm() -> Kernel {
    let s = nn::NormSpec {
        center: false,
        bias: false,
        x: DType::F32,
        scale: DType::F32,
        epsilon_bits: 1e-6f32.to_bits(),
    };
    nn::norm("lpc_rms_norm", &s).unwrap()
}

fn attention() -> Kernel {
    let s = nn::AttentionSpec {
        mask: nn::Mask::None,
        causal: true,
        softcap: false,
        per_batch_past: false,
    };
    nn::attention("lpc_attention", &s).unwrap()
}

fn qgemm_dot() -> Kernel {
    let s = qgemm::DotSpec {
        wformat: mx(),
        a_mxfp4: true,
        a_hif8: false,
        a_hif4: false,
        a_scaled: false,
        w_scaled: false,
        parts: 1,
        bias: false,
        residual: true,
        activation: None,
    };
    qgemm::dot("lpc_qgemm_dot", &s).unwrap()
}

fn every_family() -> Vec<Kernel> {
    let mut ks = vec![rms_norm(), attention(), qgemm_dot()];
    ks.push(
        nn::norm(
            "lpc_layer_norm",
            &nn::NormSpec {
                center: true,
                bias: true,
                x: DType::F16,
                scale: DType::F32,
                epsilon_bits: 1e-5f32.to_bits(),
            },
        )
        .unwrap(),
    );
    ks.push(
        nn::rope(
            "lpc_rope",
            &nn::RopeSpec {
                x: DType::F32,
                cache: DType::F32,
                interleaved: false,
                position_ids: true,
                bhsd: false,
            },
        )
        .unwrap(),
    );
    ks.push(
        nn::attention(
            "lpc_attention_masked",
            &nn::AttentionSpec {
                mask: nn::Mask::Float,
                causal: false,
                softcap: true,
                per_batch_past: true,
            },
        )
        .unwrap(),
    );
    ks.push(qgemm::rotate("lpc_rotate"));
    for bytes in [1, 2, 4, 8] {
        ks.push(shape::copy(&format!("lpc_copy{bytes}"), 4, bytes).unwrap());
        ks.push(shape::gather(&format!("lpc_gather{bytes}"), bytes).unwrap());
    }
    ks.push(qgemm::quant_mxfp4("lpc_quant_mxfp4", false));
    ks.push(qgemm::quant_hif8("lpc_quant_hif8", true, true));
    ks.push(qgemm::quant_hif4("lpc_quant_hif4", false));
    for (i, f) in ["hif4", "hif8"].into_iter().enumerate() {
        let s = qgemm::DotSpec {
            wformat: Format::parse(f, None, None).unwrap(),
            a_mxfp4: false,
            a_hif8: f == "hif8",
            a_hif4: false,
            a_scaled: f == "hif8",
            w_scaled: f == "hif8",
            parts: 2,
            bias: true,
            residual: false,
            activation: Some("gelu".into()),
        };
        ks.push(qgemm::dot(&format!("lpc_qgemm_w{i}"), &s).unwrap());
    }
    for (i, op) in elementwise::OPS.iter().enumerate() {
        let (ins, out) = match *op {
            "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" => {
                (vec![DType::F32, DType::F32], DType::Bool)
            }
            "And" | "Or" | "Xor" => (vec![DType::Bool, DType::Bool], DType::Bool),
            "Not" => (vec![DType::Bool], DType::Bool),
            "Where" => (vec![DType::Bool, DType::Bf16, DType::Bf16], DType::Bf16),
            "Cast" => (vec![DType::F32], DType::I64),
            "Add" | "Sub" | "Mul" | "Div" | "Max" | "Min" | "lpc.swiglu" => {
                (vec![DType::F32, DType::F16], DType::F32)
            }
            _ => (vec![DType::F32], DType::F32),
        };
        let s = elementwise::Spec {
            op: op.to_string(),
            rank: 3,
            ins,
            out,
            tanh_gelu: false,
        };
        ks.push(elementwise::kernel(&format!("lpc_ew{i}"), &s).unwrap());
    }
    ks
}

#[test]
fn every_kernel_family_lowers_to_ptx_without_libdevice() {
    let c = GpuCompiler::new();
    let ks = every_family();
    let ptx = c.lower_to_ptx(&gpu_module(&ks), "sm_90").unwrap();
    assert_eq!(ptx.len(), 1);
    let text = &ptx[0].ptx;
    assert!(text.contains(".target sm_90"));
    for k in &ks {
        assert!(
            text.contains(&format!(".entry {}(", k.name)),
            "no entry for {}",
            k.name
        );
    }
    assert!(!text.contains("__nv_"), "PTX calls libdevice");
    assert!(!text.contains(".extern"), "PTX has unresolved externals");
}

#[test]
fn kernel_mlir_snapshots() {
    insta::assert_snapshot!("rms_norm", rms_norm().device_source());
    insta::assert_snapshot!("attention", attention().device_source());
    insta::assert_snapshot!("qgemm_mxfp4", qgemm_dot().device_source());
}
