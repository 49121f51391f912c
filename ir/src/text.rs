//! The textual form of the IR.
//!
//! ```text
//! graph "main" ["" = 17, "com.microsoft" = 1] {
//!   input %0 "input_ids": i64[batch, sequence_length]
//!   const %1 "w": f32[128, 256] = blob 9a3c0e1f2b4d5a67
//!   const %2 "shape": i64[2] = [1, -1]
//!   %3 "x": f32[batch, sequence_length, 256] = MatMul(%0, %1) "/m/MatMul"
//!   %4 "a", %5 "b" = Split(%3, _) {axis = -1, num_outputs = 2} "/m/Split"
//!   output %5
//! }
//! ```
//!
//! Values are numbered in print order; names are the ONNX names. Constants of
//! up to [`INLINE_MAX`] elements are written out; larger ones are written as
//! `blob` with their [`Tensor::fingerprint`] and are resolved by name when
//! parsing. Printing, parsing and printing again gives the same text.

use crate::{Attr, DType, Def, Dim, Graph, NewNode, Tensor, Type, ValueId};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use thiserror::Error;

/// Constants with at most this many elements are printed inline.
pub const INLINE_MAX: usize = 16;

fn quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\x{:02x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '.')
}

fn fmt_dim(d: &Dim) -> String {
    match d {
        Dim::Sym(s) if !is_ident(s) || s == "_" => quote(s),
        d => d.to_string(),
    }
}

fn fmt_type(t: &Type) -> String {
    let mut s = t.dtype.to_string();
    if let Some(shape) = &t.shape {
        let dims: Vec<String> = shape.iter().map(fmt_dim).collect();
        let _ = write!(s, "[{}]", dims.join(", "));
    }
    s
}

fn fmt_f32(x: f32) -> String {
    format!("{x:?}")
}

fn fmt_elems(t: &Tensor) -> String {
    let items: Vec<String> = match t.dtype {
        DType::F32 | DType::F16 | DType::Bf16 => {
            t.to_f64_vec().iter().map(|&v| fmt_f32(v as f32)).collect()
        }
        DType::F64 => t.to_f64_vec().iter().map(|v| format!("{v:?}")).collect(),
        _ => t
            .to_i64_vec()
            .unwrap_or_default()
            .iter()
            .map(|v| v.to_string())
            .collect(),
    };
    format!("[{}]", items.join(", "))
}

fn fmt_attr(a: &Attr) -> String {
    let list = |v: Vec<String>| v.join(", ");
    match a {
        Attr::Int(i) => i.to_string(),
        Attr::Float(f) => fmt_f32(*f),
        Attr::String(s) => quote(s),
        Attr::Ints(v) => format!("ints[{}]", list(v.iter().map(|x| x.to_string()).collect())),
        Attr::Floats(v) => format!("floats[{}]", list(v.iter().map(|x| fmt_f32(*x)).collect())),
        Attr::Strings(v) => format!("strings[{}]", list(v.iter().map(|x| quote(x)).collect())),
        Attr::Tensor(t) => format!(
            "tensor<{}> {}",
            fmt_type(&Type::fixed(t.dtype, &t.dims)),
            fmt_elems(t)
        ),
    }
}

/// Prints a graph. Fails only on a cycle (see [`crate::verify`]).
pub fn print(g: &Graph) -> String {
    let order = g.topo_order().unwrap_or_else(|_| g.node_ids().collect());
    let mut num: HashMap<ValueId, usize> = HashMap::new();
    let mut next = 0;
    let mut out = String::new();
    let opsets: Vec<String> = g
        .opsets
        .iter()
        .map(|(d, v)| format!("{} = {v}", quote(d)))
        .collect();
    let _ = writeln!(out, "graph {} [{}] {{", quote(&g.name), opsets.join(", "));
    let decl = |v: ValueId, num: &mut HashMap<ValueId, usize>, next: &mut usize| -> String {
        num.insert(v, *next);
        *next += 1;
        let val = g.value(v);
        let mut s = format!("%{} {}", *next - 1, quote(&val.name));
        if let Some(t) = &val.ty {
            let _ = write!(s, ": {}", fmt_type(t));
        }
        s
    };
    for &i in &g.inputs {
        let d = decl(i, &mut num, &mut next);
        let _ = writeln!(out, "  input {d}");
    }
    // Constants read by a node or an output, in value order.
    let mut used: Vec<ValueId> = order
        .iter()
        .flat_map(|&n| g.node(n).inputs.iter().flatten().copied())
        .chain(g.outputs.iter().copied())
        .filter(|&v| g.constant(v).is_some())
        .collect();
    used.sort();
    used.dedup();
    for v in used {
        let t = g.constant(v).expect("constant");
        let d = decl(v, &mut num, &mut next);
        if t.len() <= INLINE_MAX {
            let _ = writeln!(out, "  const {d} = {}", fmt_elems(t));
        } else {
            let _ = writeln!(out, "  const {d} = blob {:016x}", t.fingerprint());
        }
    }
    let reference = |v: &Option<ValueId>, num: &HashMap<ValueId, usize>| match v {
        None => "_".to_string(),
        Some(v) => match num.get(v) {
            Some(k) => format!("%{k}"),
            None => format!("%undefined({})", quote(&g.value(*v).name)),
        },
    };
    for n in order {
        let node = g.node(n);
        let args: Vec<String> = node.inputs.iter().map(|v| reference(v, &num)).collect();
        let outs: Vec<String> = node
            .outputs
            .iter()
            .map(|&v| decl(v, &mut num, &mut next))
            .collect();
        let mut line = format!("  {} = {}({})", outs.join(", "), node.op, args.join(", "));
        if !node.attrs.is_empty() {
            let attrs: Vec<String> = node
                .attrs
                .iter()
                .map(|(k, a)| format!("{k} = {}", fmt_attr(a)))
                .collect();
            let _ = write!(line, " {{{}}}", attrs.join(", "));
        }
        let _ = writeln!(out, "{line} {}", quote(&node.name));
    }
    for o in &g.outputs {
        let _ = writeln!(out, "  output {}", reference(&Some(*o), &num));
    }
    out.push_str("}\n");
    out
}

#[derive(Debug, Error, PartialEq)]
#[error("IR text line {line}: {msg}")]
pub struct ParseError {
    pub line: usize,
    pub msg: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Val(usize),
    Punct(char),
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let mut toks = Vec::new();
    let b: Vec<char> = src.chars().collect();
    let (mut i, mut line) = (0, 1);
    let err = |line, msg: String| ParseError { line, msg };
    while i < b.len() {
        let c = b[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(err(line, "unterminated string".into())),
                    Some('"') => break,
                    Some('\\') => {
                        match b.get(i + 1) {
                            Some('n') => s.push('\n'),
                            Some('"') => s.push('"'),
                            Some('\\') => s.push('\\'),
                            Some('x') => {
                                let h: String = b.get(i + 2..i + 4).unwrap_or(&[]).iter().collect();
                                let v = u32::from_str_radix(&h, 16)
                                    .map_err(|_| err(line, "bad \\x escape".into()))?;
                                s.push(char::from_u32(v).unwrap_or('?'));
                                i += 2;
                            }
                            _ => return Err(err(line, "bad escape".into())),
                        }
                        i += 2;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            i += 1;
            toks.push((Tok::Str(s), line));
        } else if c == '%' {
            let st = i + 1;
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let n: String = b[st..i].iter().collect();
            let n = n
                .parse()
                .map_err(|_| err(line, "bad value reference".into()))?;
            toks.push((Tok::Val(n), line));
        } else if c.is_ascii_digit()
            || (c == '-'
                && b.get(i + 1)
                    .is_some_and(|d| d.is_ascii_digit() || *d == 'i'))
        {
            let st = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || matches!(b[i], '.' | '-' | '+')) {
                i += 1;
            }
            toks.push((Tok::Num(b[st..i].iter().collect()), line));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || matches!(b[i], '_' | '.')) {
                i += 1;
            }
            toks.push((Tok::Ident(b[st..i].iter().collect()), line));
        } else if "{}[](),=:<>?".contains(c) {
            toks.push((Tok::Punct(c), line));
            i += 1;
        } else {
            return Err(err(line, format!("unexpected character `{c}`")));
        }
    }
    Ok(toks)
}

struct Parser<'a> {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    resolve: &'a dyn Fn(&str) -> Option<Tensor>,
}

impl Parser<'_> {
    fn line(&self) -> usize {
        self.toks
            .get(self.pos)
            .or(self.toks.last())
            .map_or(0, |t| t.1)
    }
    fn err<T>(&self, msg: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            line: self.line(),
            msg: msg.into(),
        })
    }
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }
    fn next(&mut self) -> Result<Tok, ParseError> {
        let t = self.toks.get(self.pos).map(|t| t.0.clone());
        self.pos += 1;
        t.map_or_else(|| self.err("unexpected end of text"), Ok)
    }
    fn punct(&mut self, c: char) -> Result<(), ParseError> {
        match self.next()? {
            Tok::Punct(p) if p == c => Ok(()),
            t => self.err(format!("expected `{c}`, found {t:?}")),
        }
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Punct(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn ident(&mut self) -> Result<String, ParseError> {
        match self.next()? {
            Tok::Ident(s) => Ok(s),
            t => self.err(format!("expected a name, found {t:?}")),
        }
    }
    fn string(&mut self) -> Result<String, ParseError> {
        match self.next()? {
            Tok::Str(s) => Ok(s),
            t => self.err(format!("expected a string, found {t:?}")),
        }
    }
    fn num(&mut self) -> Result<String, ParseError> {
        match self.next()? {
            Tok::Num(s) => Ok(s),
            Tok::Ident(s) if s == "NaN" || s == "inf" => Ok(s),
            t => self.err(format!("expected a number, found {t:?}")),
        }
    }
    fn int(&mut self) -> Result<i64, ParseError> {
        let s = self.num()?;
        s.parse()
            .map_or_else(|_| self.err(format!("bad integer `{s}`")), Ok)
    }
    fn float(&mut self) -> Result<f64, ParseError> {
        let s = self.num()?;
        s.parse()
            .map_or_else(|_| self.err(format!("bad number `{s}`")), Ok)
    }
    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, ParseError>,
    ) -> Result<Vec<T>, ParseError> {
        self.punct('[')?;
        let mut v = Vec::new();
        if self.eat(']') {
            return Ok(v);
        }
        loop {
            v.push(item(self)?);
            if self.eat(']') {
                return Ok(v);
            }
            self.punct(',')?;
        }
    }
    fn ty(&mut self) -> Result<Type, ParseError> {
        let d = self.ident()?;
        let dtype = DType::from_name(&d)
            .map_or_else(|| self.err(format!("unknown element type `{d}`")), Ok)?;
        let shape = if self.peek() == Some(&Tok::Punct('[')) {
            Some(self.list(|p| {
                match p.next()? {
                    Tok::Num(n) => n
                        .parse()
                        .map(Dim::Fixed)
                        .map_or_else(|_| p.err("bad dimension"), Ok),
                    Tok::Ident(s) => Ok(Dim::Sym(s)),
                    Tok::Str(s) => Ok(Dim::Sym(s)),
                    Tok::Punct('?') => Ok(Dim::Unknown),
                    t => p.err(format!("bad dimension {t:?}")),
                }
            })?)
        } else {
            None
        };
        Ok(Type { dtype, shape })
    }
    fn elems(&mut self, ty: &Type) -> Result<Tensor, ParseError> {
        let dims: Vec<usize> = match &ty.shape {
            Some(s) => s
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => Ok(*n),
                    _ => self.err("constant shapes must be fixed"),
                })
                .collect::<Result<_, _>>()?,
            None => return self.err("constant needs a shape"),
        };
        let vals = self.list(|p| p.float())?;
        let bytes: Vec<u8> = match ty.dtype {
            DType::F32 => vals
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
            DType::F16 => vals
                .iter()
                .flat_map(|&v| half::f16::from_f64(v).to_le_bytes())
                .collect(),
            DType::Bf16 => vals
                .iter()
                .flat_map(|&v| half::bf16::from_f64(v).to_le_bytes())
                .collect(),
            DType::F64 => vals.iter().flat_map(|&v| v.to_le_bytes()).collect(),
            DType::I64 => vals
                .iter()
                .flat_map(|&v| (v as i64).to_le_bytes())
                .collect(),
            DType::I32 => vals
                .iter()
                .flat_map(|&v| (v as i32).to_le_bytes())
                .collect(),
            DType::I8 | DType::U8 | DType::Bool => vals.iter().map(|&v| v as i64 as u8).collect(),
            DType::I4 | DType::U4 => {
                let mut b = vec![0u8; vals.len().div_ceil(2)];
                for (i, &v) in vals.iter().enumerate() {
                    b[i / 2] |= ((v as i64 as u8) & 0xF) << (4 * (i % 2));
                }
                b
            }
        };
        Tensor::new(ty.dtype, dims, bytes.into())
            .map_or_else(|| self.err("element count does not match the shape"), Ok)
    }
    fn attr(&mut self) -> Result<Attr, ParseError> {
        Ok(match self.peek().cloned() {
            Some(Tok::Str(_)) => Attr::String(self.string()?),
            Some(Tok::Ident(k)) if k == "ints" => {
                self.pos += 1;
                Attr::Ints(self.list(|p| p.int())?)
            }
            Some(Tok::Ident(k)) if k == "floats" => {
                self.pos += 1;
                Attr::Floats(self.list(|p| p.float().map(|v| v as f32))?)
            }
            Some(Tok::Ident(k)) if k == "strings" => {
                self.pos += 1;
                Attr::Strings(self.list(|p| p.string())?)
            }
            Some(Tok::Ident(k)) if k == "tensor" => {
                self.pos += 1;
                self.punct('<')?;
                let ty = self.ty()?;
                self.punct('>')?;
                Attr::Tensor(self.elems(&ty)?)
            }
            _ => {
                let s = self.num()?;
                if s.contains(['.', 'e', 'N', 'i']) {
                    Attr::Float(
                        s.parse::<f32>()
                            .map_or_else(|_| self.err(format!("bad float `{s}`")), Ok)?,
                    )
                } else {
                    Attr::Int(
                        s.parse()
                            .map_or_else(|_| self.err(format!("bad integer `{s}`")), Ok)?,
                    )
                }
            }
        })
    }
    /// `%N "name"[: type]`
    fn decl(&mut self, expect: usize) -> Result<(String, Option<Type>), ParseError> {
        match self.next()? {
            Tok::Val(n) if n == expect => {}
            t => return self.err(format!("expected %{expect}, found {t:?}")),
        }
        let name = self.string()?;
        let ty = if self.eat(':') {
            Some(self.ty()?)
        } else {
            None
        };
        Ok((name, ty))
    }
}

/// Parses the textual form. `resolve` supplies `blob` constants by name.
pub fn parse(src: &str, resolve: &dyn Fn(&str) -> Option<Tensor>) -> Result<Graph, ParseError> {
    let mut p = Parser {
        toks: lex(src)?,
        pos: 0,
        resolve,
    };
    if p.ident()? != "graph" {
        return p.err("expected `graph`");
    }
    let mut g = Graph::new(p.string()?);
    let opsets = p.list(|p| {
        let d = p.string()?;
        p.punct('=')?;
        Ok((d, p.int()?))
    })?;
    g.opsets = opsets.into_iter().collect::<BTreeMap<_, _>>();
    p.punct('{')?;
    let mut vals: Vec<ValueId> = Vec::new();
    loop {
        match p.peek().cloned() {
            Some(Tok::Punct('}')) => {
                p.pos += 1;
                break;
            }
            Some(Tok::Ident(k)) if k == "input" => {
                p.pos += 1;
                let (name, ty) = p.decl(vals.len())?;
                vals.push(g.add_input(name, ty));
            }
            Some(Tok::Ident(k)) if k == "const" => {
                p.pos += 1;
                let (name, ty) = p.decl(vals.len())?;
                let Some(ty) = ty else {
                    return p.err("a constant needs a type");
                };
                p.punct('=')?;
                let t = if p.peek() == Some(&Tok::Ident("blob".into())) {
                    p.pos += 1;
                    let fp = match p.next()? {
                        Tok::Num(s) | Tok::Ident(s) => u64::from_str_radix(&s, 16).ok(),
                        _ => None,
                    };
                    let Some(fp) = fp else {
                        return p.err("expected a blob fingerprint");
                    };
                    let Some(t) = (p.resolve)(&name) else {
                        return p.err(format!("no data for blob constant {}", quote(&name)));
                    };
                    if t.fingerprint() != fp || Type::fixed(t.dtype, &t.dims) != ty {
                        return p.err(format!(
                            "data for {} does not match its type or fingerprint",
                            quote(&name)
                        ));
                    }
                    t
                } else {
                    p.elems(&ty)?
                };
                vals.push(g.add_const(name, t));
            }
            Some(Tok::Ident(k)) if k == "output" => {
                p.pos += 1;
                match p.next()? {
                    Tok::Val(n) if n < vals.len() => g.outputs.push(vals[n]),
                    t => return p.err(format!("bad output {t:?}")),
                }
            }
            Some(Tok::Val(_)) => {
                let mut outs = vec![p.decl(vals.len())?];
                while p.eat(',') {
                    outs.push(p.decl(vals.len() + outs.len())?);
                }
                p.punct('=')?;
                let op = p.ident()?;
                p.punct('(')?;
                let mut inputs = Vec::new();
                if !p.eat(')') {
                    loop {
                        match p.next()? {
                            Tok::Ident(u) if u == "_" => inputs.push(None),
                            Tok::Val(n) if n < vals.len() => inputs.push(Some(vals[n])),
                            t => return p.err(format!("bad operand {t:?}")),
                        }
                        if p.eat(')') {
                            break;
                        }
                        p.punct(',')?;
                    }
                }
                let mut attrs = BTreeMap::new();
                if p.eat('{') && !p.eat('}') {
                    loop {
                        let k = p.ident()?;
                        p.punct('=')?;
                        attrs.insert(k, p.attr()?);
                        if p.eat('}') {
                            break;
                        }
                        p.punct(',')?;
                    }
                }
                let name = p.string()?;
                let (_, ids) = g.add_node(
                    NewNode {
                        name,
                        op,
                        attrs,
                        inputs,
                    },
                    outs,
                );
                vals.extend(ids);
            }
            t => return p.err(format!("unexpected {t:?}")),
        }
    }
    if p.pos != p.toks.len() {
        return p.err("text after the end of the graph");
    }
    Ok(g)
}

/// A resolver for [`parse`] over the constants of an existing graph.
pub fn constants_of(g: &Graph) -> impl Fn(&str) -> Option<Tensor> + '_ {
    let by_name: HashMap<&str, &Tensor> = g
        .value_ids()
        .filter_map(|v| match &g.value(v).def {
            Def::Const(t) => Some((g.value(v).name.as_str(), t)),
            _ => None,
        })
        .collect();
    move |name| by_name.get(name).map(|t| (*t).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = r#"graph "g" ["" = 17, "com.microsoft" = 1] {
  input %0 "x": f32[batch, "seq len", 4]
  input %1 "ids": i64
  const %2 "w": f32[4, 2] = [1.0, -2.5, 0.0, 1e-6, NaN, inf, -inf, 3.0]
  const %3 "axes": i64[1] = [-1]
  %4 "y": f32[batch, "seq len", 2] = MatMul(%0, %2) "mm"
  %5 "z" = ReduceMean(%4, %3) {keepdims = 1, note = "a\"b", scale = 0.5, vals = floats[1.0, 2.5], ks = ints[], t = tensor<i64[2]> [3, 4]} "rm"
  %6 "p", %7 "q" = com.microsoft.Foo(%5, _, %1) "foo"
  output %7
  output %4
}
"#;

    #[test]
    fn round_trips() {
        let g = parse(SRC, &|_| None).unwrap();
        let printed = print(&g);
        let g2 = parse(&printed, &|_| None).unwrap();
        assert_eq!(print(&g2), printed);
        assert!(
            printed.contains("%6 \"p\", %7 \"q\" = com.microsoft.Foo(%5, _, %1) \"foo\""),
            "{printed}"
        );
    }

    #[test]
    fn blobs_resolve_by_name_and_fingerprint() {
        let mut g = Graph::new("b");
        let x = g.add_input("x", Some(Type::fixed(DType::F32, &[32])));
        let w = g.add_const("w", Tensor::from_f32(vec![32], &[0.5; 32]));
        let (_, outs) = g.add_node(
            NewNode {
                name: "add".into(),
                op: "Add".into(),
                attrs: BTreeMap::new(),
                inputs: vec![Some(x), Some(w)],
            },
            vec![("y".into(), None)],
        );
        g.outputs = outs;
        let text = print(&g);
        assert!(text.contains("= blob "), "{text}");
        let g2 = parse(&text, &constants_of(&g)).unwrap();
        assert_eq!(print(&g2), text);
        let e = parse(&text, &|_| Some(Tensor::from_f32(vec![32], &[1.0; 32]))).unwrap_err();
        assert!(e.msg.contains("fingerprint"), "{e}");
        assert!(parse(&text, &|_| None).unwrap_err().msg.contains("no data"));
    }

    #[test]
    fn errors_carry_the_line() {
        let e = parse("graph \"g\" [] {\n  input %0 \"x\": q8[1]\n}", &|_| None).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.msg.contains("q8"));
        let e = parse("graph \"g\" [] {\n  %0 \"y\" = Neg(%5) \"n\"\n}", &|_| None).unwrap_err();
        assert_eq!(e.line, 2);
    }
}
