//! A small builder for MLIR text in SSA form. Kernels are written as text
//! (readable in snapshots, verified by MLIR's parser and verifier before any
//! lowering), with fresh value names and the structured ops (`scf.for` with
//! iteration arguments, `scf.if`) as closures.

use std::fmt::Write;

/// Element types of kernel buffers and scalars.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Ty {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    I1,
    Index,
}

impl Ty {
    pub fn mlir(self) -> &'static str {
        match self {
            Ty::F32 => "f32",
            Ty::F64 => "f64",
            Ty::F16 => "f16",
            Ty::BF16 => "bf16",
            Ty::I64 => "i64",
            Ty::I32 => "i32",
            Ty::I16 => "i16",
            Ty::I8 => "i8",
            Ty::I1 => "i1",
            Ty::Index => "index",
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, Ty::F32 | Ty::F64 | Ty::F16 | Ty::BF16)
    }
    /// Bytes of one element in a buffer.
    pub fn size(self) -> usize {
        match self {
            Ty::F64 | Ty::I64 | Ty::Index => 8,
            Ty::F32 | Ty::I32 => 4,
            Ty::F16 | Ty::BF16 | Ty::I16 => 2,
            Ty::I8 | Ty::I1 => 1,
        }
    }
}

/// A function body under construction.
#[derive(Default, Debug)]
pub struct B {
    text: String,
    next: usize,
    depth: usize,
}

/// The MLIR spelling of an f32 constant, exact (hex bit pattern).
pub fn f32_lit(x: f32) -> String {
    format!("0x{:08X}", x.to_bits())
}

/// The MLIR spelling of an f64 constant, exact (hex bit pattern).
pub fn f64_lit(x: f64) -> String {
    format!("0x{:016X}", x.to_bits())
}

impl B {
    pub fn new() -> Self {
        Self {
            depth: 2,
            ..Self::default()
        }
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.text
    }

    /// Writes one line as is.
    pub fn line(&mut self, s: impl AsRef<str>) {
        for _ in 0..self.depth {
            self.text.push_str("  ");
        }
        self.text.push_str(s.as_ref());
        self.text.push('\n');
    }

    /// A fresh value name.
    pub fn fresh(&mut self) -> String {
        self.next += 1;
        format!("%v{}", self.next)
    }

    /// `%new = rhs`, returning `%new`.
    pub fn op(&mut self, rhs: impl AsRef<str>) -> String {
        let v = self.fresh();
        let mut l = String::new();
        let _ = write!(l, "{v} = {}", rhs.as_ref());
        self.line(l);
        v
    }

    pub fn index(&mut self, x: i64) -> String {
        self.op(format!("arith.constant {x} : index"))
    }
    pub fn int(&mut self, x: i64, t: Ty) -> String {
        self.op(format!("arith.constant {x} : {}", t.mlir()))
    }
    pub fn f32(&mut self, x: f32) -> String {
        self.op(format!("arith.constant {} : f32", f32_lit(x)))
    }
    pub fn f64(&mut self, x: f64) -> String {
        self.op(format!("arith.constant {} : f64", f64_lit(x)))
    }

    /// `arith.<name> a, b : t`.
    pub fn bin(&mut self, name: &str, a: &str, b: &str, t: Ty) -> String {
        self.op(format!("arith.{name} {a}, {b} : {}", t.mlir()))
    }
    pub fn cmpf(&mut self, pred: &str, a: &str, b: &str, t: Ty) -> String {
        self.op(format!("arith.cmpf {pred}, {a}, {b} : {}", t.mlir()))
    }
    pub fn cmpi(&mut self, pred: &str, a: &str, b: &str, t: Ty) -> String {
        self.op(format!("arith.cmpi {pred}, {a}, {b} : {}", t.mlir()))
    }
    pub fn select(&mut self, c: &str, a: &str, b: &str, t: Ty) -> String {
        self.op(format!("arith.select {c}, {a}, {b} : {}", t.mlir()))
    }
    /// A cast op from `a: from` to `to` (`arith.extf`, `arith.index_cast`, ...).
    pub fn cast(&mut self, name: &str, a: &str, from: Ty, to: Ty) -> String {
        self.op(format!(
            "arith.{name} {a} : {} to {}",
            from.mlir(),
            to.mlir()
        ))
    }
    /// f32 to bf16, round to nearest even (NaN stays a quiet NaN), in
    /// integer ops: the host JIT has no `__truncsfbf2`.
    pub fn f32_to_bf16(&mut self, x: &str) -> String {
        let bits = self.bitcast(x, Ty::F32, Ty::I32);
        let c16 = self.int(16, Ty::I32);
        let one = self.int(1, Ty::I32);
        let sh = self.bin("shrui", &bits, &c16, Ty::I32);
        let lsb = self.bin("andi", &sh, &one, Ty::I32);
        let bias = self.int(0x7FFF, Ty::I32);
        let r = self.bin("addi", &lsb, &bias, Ty::I32);
        let sum = self.bin("addi", &bits, &r, Ty::I32);
        let rounded = self.bin("shrui", &sum, &c16, Ty::I32);
        let nan = self.cmpf("uno", x, x, Ty::F32);
        let qnan = self.int(0x7FC0, Ty::I32);
        let q = self.bin("ori", &sh, &qnan, Ty::I32);
        let v = self.select(&nan, &q, &rounded, Ty::I32);
        let h = self.cast("trunci", &v, Ty::I32, Ty::I16);
        self.bitcast(&h, Ty::I16, Ty::BF16)
    }
    /// bf16 to f32 (exact: the bits shifted up).
    pub fn bf16_to_f32(&mut self, x: &str) -> String {
        let h = self.bitcast(x, Ty::BF16, Ty::I16);
        let w = self.cast("extui", &h, Ty::I16, Ty::I32);
        let c16 = self.int(16, Ty::I32);
        let bits = self.bin("shli", &w, &c16, Ty::I32);
        self.bitcast(&bits, Ty::I32, Ty::F32)
    }
    /// Converts between float types (bf16 through the integer helpers).
    pub fn convf(&mut self, x: &str, from: Ty, to: Ty) -> String {
        match (from, to) {
            _ if from == to => x.to_string(),
            (Ty::F32, Ty::BF16) => self.f32_to_bf16(x),
            (Ty::BF16, Ty::F32) => self.bf16_to_f32(x),
            (Ty::BF16, _) => {
                let f = self.bf16_to_f32(x);
                self.convf(&f, Ty::F32, to)
            }
            (_, Ty::BF16) => {
                let f = self.convf(x, from, Ty::F32);
                self.f32_to_bf16(&f)
            }
            _ if from.size() < to.size() => self.cast("extf", x, from, to),
            _ => self.cast("truncf", x, from, to),
        }
    }
    pub fn bitcast(&mut self, a: &str, from: Ty, to: Ty) -> String {
        self.cast("bitcast", a, from, to)
    }

    /// |x| by clearing the sign bit (no `math` op: the NVVM lowering turns
    /// those into libdevice calls).
    pub fn absf(&mut self, x: &str, t: Ty) -> String {
        let (it, mask) = Self::bits_of(t);
        let bits = self.bitcast(x, t, it);
        let m = self.int(mask, it);
        let a = self.bin("andi", &bits, &m, it);
        self.bitcast(&a, it, t)
    }
    /// |x| with the sign of `s`.
    pub fn copysign(&mut self, x: &str, s: &str, t: Ty) -> String {
        let (it, mask) = Self::bits_of(t);
        let xb = self.bitcast(x, t, it);
        let sb = self.bitcast(s, t, it);
        let m = self.int(mask, it);
        let mag = self.bin("andi", &xb, &m, it);
        let nm = self.int(!mask, it);
        let sign = self.bin("andi", &sb, &nm, it);
        let r = self.bin("ori", &mag, &sign, it);
        self.bitcast(&r, it, t)
    }
    fn bits_of(t: Ty) -> (Ty, i64) {
        match t {
            Ty::F64 => (Ty::I64, i64::MAX),
            Ty::F32 => (Ty::I32, i32::MAX as i64),
            _ => panic!("absf/copysign on {t:?}"),
        }
    }

    pub fn load(&mut self, buf: &str, i: &str, t: Ty) -> String {
        self.op(format!("memref.load {buf}[{i}] : memref<?x{}>", t.mlir()))
    }
    pub fn store(&mut self, v: &str, buf: &str, i: &str, t: Ty) {
        self.line(format!(
            "memref.store {v}, {buf}[{i}] : memref<?x{}>",
            t.mlir()
        ));
    }
    /// Calls `@f` with typed arguments, returning its single result if `ret`.
    pub fn call(&mut self, f: &str, args: &[(&str, Ty)], ret: Option<Ty>) -> Option<String> {
        let names: Vec<&str> = args.iter().map(|a| a.0).collect();
        let tys: Vec<&str> = args.iter().map(|a| a.1.mlir()).collect();
        let rhs = format!(
            "func.call @{f}({}) : ({}) -> ({})",
            names.join(", "),
            tys.join(", "),
            ret.map_or("", |t| t.mlir())
        );
        match ret {
            Some(_) => Some(self.op(rhs)),
            None => {
                self.line(rhs);
                None
            }
        }
    }

    /// `scf.for %j = lo to hi step step iter_args(...)`: `f` gets the
    /// induction variable and the iteration values and returns the next ones.
    /// Returns the loop's results (`%r` for one, `%r#k` for several).
    pub fn for_(
        &mut self,
        lo: &str,
        hi: &str,
        step: &str,
        inits: &[(&str, Ty)],
        f: impl FnOnce(&mut B, &str, &[String]) -> Vec<String>,
    ) -> Vec<String> {
        let j = self.fresh();
        let accs: Vec<String> = inits.iter().map(|_| self.fresh()).collect();
        let tys: Vec<&str> = inits.iter().map(|a| a.1.mlir()).collect();
        let (head, results) = if inits.is_empty() {
            (
                format!("scf.for {j} = {lo} to {hi} step {step} {{"),
                Vec::new(),
            )
        } else {
            let r = self.fresh();
            let args: Vec<String> = accs
                .iter()
                .zip(inits)
                .map(|(a, i)| format!("{a} = {}", i.0))
                .collect();
            let (name, results) = if inits.len() == 1 {
                (r.clone(), vec![r])
            } else {
                (
                    format!("{r}:{}", inits.len()),
                    (0..inits.len()).map(|k| format!("{r}#{k}")).collect(),
                )
            };
            (
                format!(
                    "{name} = scf.for {j} = {lo} to {hi} step {step} iter_args({}) -> ({}) {{",
                    args.join(", "),
                    tys.join(", ")
                ),
                results,
            )
        };
        self.line(head);
        self.depth += 1;
        let next = f(self, &j, &accs);
        assert_eq!(next.len(), inits.len(), "scf.for yields one value per init");
        if !inits.is_empty() {
            self.line(format!(
                "scf.yield {} : {}",
                next.join(", "),
                tys.join(", ")
            ));
        }
        self.depth -= 1;
        self.line("}");
        results
    }

    /// `scf.if cond` without results.
    pub fn if_(&mut self, cond: &str, f: impl FnOnce(&mut B)) {
        self.line(format!("scf.if {cond} {{"));
        self.depth += 1;
        f(self);
        self.depth -= 1;
        self.line("}");
    }

    /// `scf.if cond -> (t) { then } else { else }`, one result.
    pub fn if_else(
        &mut self,
        cond: &str,
        t: Ty,
        then: impl FnOnce(&mut B) -> String,
        els: impl FnOnce(&mut B) -> String,
    ) -> String {
        let r = self.fresh();
        self.line(format!("{r} = scf.if {cond} -> ({}) {{", t.mlir()));
        self.depth += 1;
        let a = then(self);
        self.line(format!("scf.yield {a} : {}", t.mlir()));
        self.depth -= 1;
        self.line("} else {");
        self.depth += 1;
        let b = els(self);
        self.line(format!("scf.yield {b} : {}", t.mlir()));
        self.depth -= 1;
        self.line("}");
        r
    }
}
