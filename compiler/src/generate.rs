//! `lpc generate`: greedy decoding with a compiled decoder LLM (Qwen3-style
//! exports: `input_ids`, optional `attention_mask` / `position_ids`, a KV
//! cache as `past_key_values.N.key|value` inputs and `present.N.key|value`
//! outputs, `logits` first or by name). A prefill on the prompt, then one
//! token per step with the cache; optionally a reference library (f32) fed
//! the same tokens, for agreement.

use crate::native::NativeModel;
use lpc_ir::interp::{Data, TensorValue};
use lpc_ir::DType;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// How a library's inputs are fed.
#[derive(Debug)]
enum Role {
    Ids,
    Mask,
    Positions,
    /// A cache input and the output that continues it; (kv heads, head dim).
    Past {
        output: usize,
        heads: usize,
        dim: usize,
    },
}

/// A decoder library with its inputs understood.
#[derive(Debug)]
struct Decoder {
    m: NativeModel,
    roles: Vec<Role>,
    logits: usize,
    path: String,
}

impl Decoder {
    fn new(path: &Path, threads: i32) -> Result<Self, String> {
        let m = NativeModel::load(path, threads)?;
        let p = path.display().to_string();
        let out_idx = |n: &str| m.outputs.iter().position(|o| o.0 == n);
        let mut roles = Vec::new();
        for (i, (name, dt)) in m.inputs.iter().enumerate() {
            let role = match name.as_str() {
                "input_ids" => Role::Ids,
                "attention_mask" => Role::Mask,
                "position_ids" => Role::Positions,
                n if n.contains("past") => {
                    let present = n.replace("past_key_values", "present");
                    let output = out_idx(&present).ok_or_else(|| {
                        format!("{p}: cache input `{n}` has no output `{present}`")
                    })?;
                    let d = &m.input_dims[i];
                    // The prefill's empty cache: a symbolic head dim is
                    // bound to 0 there (nothing is read from it).
                    match (d.len(), d.get(1).copied().flatten()) {
                        (4, Some(heads)) if *dt == DType::F32 => Role::Past {
                            output,
                            heads,
                            dim: d[3].unwrap_or(0),
                        },
                        _ => {
                            return Err(format!(
                                "{p}: cache input `{n}` is not f32 [batch, heads, past, dim] with a fixed head count"
                            ))
                        }
                    }
                }
                n => {
                    return Err(format!(
                        "{p}: input `{n}` is not one a decoder takes (input_ids, attention_mask, position_ids, past_key_values.*)"
                    ))
                }
            };
            roles.push(role);
        }
        if !roles.iter().any(|r| matches!(r, Role::Ids)) {
            return Err(format!("{p}: no input_ids input"));
        }
        let logits = out_idx("logits").unwrap_or(0);
        Ok(Self {
            m,
            roles,
            logits,
            path: p,
        })
    }

    /// Runs `tokens` after `past` cached positions; returns the logits of
    /// the last position and the updated cache.
    fn step(
        &self,
        tokens: &[i64],
        past: usize,
        cache: &mut Vec<TensorValue>,
    ) -> Result<(Vec<f32>, Duration), String> {
        let s = tokens.len();
        let mut ins = Vec::with_capacity(self.roles.len());
        let mut k = 0;
        for (i, r) in self.roles.iter().enumerate() {
            let dt = self.m.inputs[i].1;
            let ints =
                |v: Vec<i64>, shape: Vec<usize>| TensorValue::with_dtype(dt, shape, Data::I(v));
            ins.push(match r {
                Role::Ids => ints(tokens.to_vec(), vec![1, s]),
                Role::Mask => ints(vec![1; past + s], vec![1, past + s]),
                Role::Positions => ints((past..past + s).map(|p| p as i64).collect(), vec![1, s]),
                Role::Past { heads, dim, .. } => {
                    let v = cache
                        .get(k)
                        .cloned()
                        .unwrap_or_else(|| TensorValue::f32(vec![1, *heads, 0, *dim], Vec::new()));
                    k += 1;
                    v
                }
            });
        }
        let t = Instant::now();
        let outs = self.m.run(&ins)?;
        let dt = t.elapsed();
        *cache = self
            .roles
            .iter()
            .filter_map(|r| match r {
                Role::Past { output, .. } => Some(outs[*output].clone()),
                _ => None,
            })
            .collect();
        let l = &outs[self.logits];
        let v = l
            .as_f32()
            .ok_or_else(|| format!("{}: logits are not f32", self.path))?;
        let vocab = *l.shape.last().unwrap_or(&0);
        if vocab == 0 || v.len() < vocab {
            return Err(format!("{}: empty logits", self.path));
        }
        Ok((v[v.len() - vocab..].to_vec(), dt))
    }
}

fn argmax(v: &[f32]) -> i64 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as i64
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-300)
}

/// Greedy decoding of `steps` tokens after `prompt`; with `reference`, the
/// same tokens through the reference library for agreement.
pub fn generate(
    lib: &Path,
    prompt: &[i64],
    steps: usize,
    reference: Option<&Path>,
    threads: i32,
) -> Result<String, String> {
    if prompt.is_empty() {
        return Err("--prompt needs at least one token id".into());
    }
    let d = Decoder::new(lib, threads)?;
    let r = reference.map(|p| Decoder::new(p, threads)).transpose()?;
    let (mut cache, mut rcache) = (Vec::new(), Vec::new());
    let mut out = String::new();
    let mut tokens = prompt.to_vec();
    let mut agree = 0;
    let mut cos_sum = 0f64;
    let mut cos_min = f64::INFINITY;
    let mut compared = 0;
    let mut prefill = Duration::ZERO;
    let mut decode = Duration::ZERO;
    let mut past = 0;
    let mut input: Vec<i64> = prompt.to_vec();
    let mut rtokens = Vec::new();
    for step in 0..=steps {
        let (logits, dt) = d.step(&input, past, &mut cache)?;
        if step == 0 {
            prefill = dt;
        } else {
            decode += dt;
        }
        let next = argmax(&logits);
        if let Some(r) = &r {
            let (rl, _) = r.step(&input, past, &mut rcache)?;
            let rn = argmax(&rl);
            rtokens.push(rn);
            agree += (rn == next) as usize;
            let c = cosine(&logits, &rl);
            cos_sum += c;
            cos_min = cos_min.min(c);
            compared += 1;
        }
        past += input.len();
        if step == steps {
            break;
        }
        tokens.push(next);
        input = vec![next];
    }
    let gen = &tokens[prompt.len()..];
    let _ = writeln!(out, "prompt ({} tokens): {prompt:?}", prompt.len());
    let _ = writeln!(out, "generated ({} tokens, greedy): {gen:?}", gen.len());
    let tps = |n: usize, t: Duration| n as f64 / t.as_secs_f64().max(1e-9);
    let _ = writeln!(
        out,
        "prefill: {} tokens in {:.2} ms ({:.0} tokens/s); decode: {} steps in {:.2} ms ({:.0} tokens/s)",
        prompt.len(),
        prefill.as_secs_f64() * 1e3,
        tps(prompt.len(), prefill),
        steps,
        decode.as_secs_f64() * 1e3,
        tps(steps, decode)
    );
    if r.is_some() {
        let _ = writeln!(
            out,
            "reference on the same tokens: next-token agreement {agree}/{compared}, logits cosine mean {:.6} min {:.6}",
            cos_sum / compared.max(1) as f64,
            cos_min
        );
        let _ = writeln!(
            out,
            "reference's next-token choices on the same prefixes: {:?}",
            &rtokens[..rtokens.len().min(steps)]
        );
    }
    Ok(out)
}
