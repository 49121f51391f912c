//! `model.h`: the C API of an emitted library (fixed, implemented by
//! `lpc-rt`) and this model's inputs and outputs (names, element types,
//! symbolic shapes) as macros and comments.

use lpc_rt::desc::{dtype, DimDesc, ModelDesc, TensorDesc};
use std::fmt::Write;

const API: &str = r#"#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element types: ONNX TensorProto.DataType codes. */
enum {
  LPC_F32 = 1, LPC_U8 = 2, LPC_I8 = 3, LPC_I32 = 6, LPC_I64 = 7,
  LPC_BOOL = 9, LPC_F16 = 10, LPC_F64 = 11, LPC_BF16 = 16
};

/* Return codes of lpc_model_run. */
enum {
  LPC_OK = 0, LPC_BAD_ARGUMENT = 1, LPC_BAD_INPUT = 2,
  LPC_RUN_FAILED = 3, LPC_INTERNAL = 4
};

#define LPC_MAX_RANK 8

/* A tensor: C-order, `data` points at dims[0] * ... * dims[rank-1] elements. */
typedef struct {
  int32_t dtype;
  int32_t rank;
  int64_t dims[LPC_MAX_RANK];
  void *data;
} lpc_tensor;

/* Load options; NULL means defaults. num_threads 0: LPC_NUM_THREADS, else all cores. */
typedef struct {
  int32_t num_threads;
} lpc_options;

typedef struct lpc_model lpc_model;

/* Maps and checks the weights file (size and CRC-32 against what the library
   was compiled with; NULL when the weights are embedded). NULL on failure:
   see lpc_last_error(). */
lpc_model *lpc_model_load(const char *weights_path, const lpc_options *options);

/* Checks the inputs against the declared element types and shapes, then runs.
   Output descriptors are filled in; their data is owned by the model and
   stays valid until the next run or lpc_model_free. One run at a time per
   model: a call while another thread runs the same model returns
   LPC_BAD_ARGUMENT (load one model per concurrent caller). */
int lpc_model_run(lpc_model *model, const lpc_tensor *inputs, int64_t n_inputs,
                  lpc_tensor *outputs, int64_t n_outputs);

void lpc_model_free(lpc_model *model);

/* Wakes the model's worker threads (parked after about 200 us without work)
   and returns once they spin: a run started within 200 us has every thread
   from its first parallel loop. For benchmarks that flush the caches between
   runs, and callers that wake the threads while preparing the next input.
   Does nothing while the model runs on another thread. */
void lpc_model_wake(lpc_model *model);

/* The message of the last failure on this thread ("" if none). */
const char *lpc_last_error(void);

/* Time per node over the runs so far, as a text table (slowest first), for a
   library compiled with `lpc compile --profile`; "" otherwise. Owned by the
   model until the next call or lpc_model_free. Not while the model runs. */
const char *lpc_model_profile(lpc_model *model);

int64_t lpc_model_num_inputs(const lpc_model *model);
int64_t lpc_model_num_outputs(const lpc_model *model);
/* Name and element type of input/output i (NULL / -1 when out of range). */
const char *lpc_model_input_name(const lpc_model *model, int64_t i);
const char *lpc_model_output_name(const lpc_model *model, int64_t i);
int32_t lpc_model_input_dtype(const lpc_model *model, int64_t i);
int32_t lpc_model_output_dtype(const lpc_model *model, int64_t i);
/* Rank of input i, and its dimension k: the fixed size, or -1 when symbolic. */
int32_t lpc_model_input_rank(const lpc_model *model, int64_t i);
int64_t lpc_model_input_dim(const lpc_model *model, int64_t i, int32_t k);
"#;

fn ident(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn c_string(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                o.push('\\');
                o.push(c);
            }
            c if c.is_ascii_graphic() || c == ' ' => o.push(c),
            c => {
                let _ = write!(o, "\\x{:02x}", c as u32 & 0xff);
            }
        }
    }
    o.push('"');
    o
}

fn tensor(out: &mut String, d: &ModelDesc, kind: &str, i: usize, t: &TensorDesc) {
    let p = format!("LPC_{kind}_{i}");
    let _ = writeln!(
        out,
        "/* {} {i}: {} {}{} */",
        kind.to_ascii_lowercase(),
        t.name.replace("*/", "* /"),
        dtype::name(t.dtype),
        d.shape_text(t)
    );
    let _ = writeln!(out, "#define {p}_NAME {}", c_string(&t.name));
    let _ = writeln!(out, "#define {p}_DTYPE {}", t.dtype);
    let _ = writeln!(out, "#define {p}_RANK {}", t.dims.len());
    let dims: Vec<String> = t
        .dims
        .iter()
        .map(|x| match x {
            DimDesc::Fixed(n) => n.to_string(),
            DimDesc::Sym(_) => "-1".into(),
        })
        .collect();
    let _ = writeln!(
        out,
        "#define {p}_DIMS {{{}}} /* -1: symbolic */",
        dims.join(", ")
    );
}

/// The header text for a model.
pub fn render(d: &ModelDesc, embedded: bool) -> String {
    let guard = format!("LPC_MODEL_{}_H", ident(&d.name));
    let mut out =
        format!(
        "/* Generated by lpc for model `{}`. Weights: {}. */\n#ifndef {guard}\n#define {guard}\n\n",
        d.name.replace("*/", "* /"),
        if embedded {
            "embedded in the library (pass NULL to lpc_model_load)".to_string()
        } else {
            format!("{} bytes in the .lpcw file beside the library", d.weights_len)
        }
    );
    out.push_str(API);
    let _ = writeln!(out, "\n#define LPC_MODEL_NAME {}", c_string(&d.name));
    let _ = writeln!(out, "#define LPC_NUM_INPUTS {}", d.inputs.len());
    let _ = writeln!(out, "#define LPC_NUM_OUTPUTS {}", d.outputs.len());
    for s in &d.symbols {
        let _ = writeln!(out, "/* symbol {}: at most {} */", s.name, s.max);
    }
    for (i, t) in d.inputs.iter().enumerate() {
        tensor(&mut out, d, "INPUT", i, t);
    }
    for (i, t) in d.outputs.iter().enumerate() {
        tensor(&mut out, d, "OUTPUT", i, t);
    }
    let _ = write!(
        out,
        "\n#ifdef __cplusplus\n}}\n#endif\n#endif /* {guard} */\n"
    );
    out
}
