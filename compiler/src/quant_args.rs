//! The quantization options shared by `lpc compile`, `lpc run` and `lpc eval`.

use clap::Args;
use lpc_passes::QuantConfig;
use lpc_runtime::formats::Format;
use regex::Regex;

#[derive(Debug, Clone, Default, Args)]
pub struct QuantArgs {
    /// mxfp4 or hif4 (W4A4), hif8 (W8A8), or none (default: nothing quantized).
    #[arg(long)]
    pub format: Option<String>,
    /// Weight format, for mixed schemes (overrides --format for weights).
    #[arg(long)]
    pub weights: Option<String>,
    /// Activation format, for mixed schemes (`none`: weight-only).
    #[arg(long)]
    pub activations: Option<String>,
    /// Rounding of mxfp4 (rne | ties-away) and hif8 (ta | saturate | hybrid).
    #[arg(long)]
    pub rounding: Option<String>,
    /// Encoder variant of hif4 (consortium | amct).
    #[arg(long)]
    pub variant: Option<String>,
    /// Block Hadamard rotation: hadamard (default for 4-bit formats) or none.
    #[arg(long)]
    pub rotate: Option<String>,
    /// Power-of-two row scales for HiF8 (per output channel and per token),
    /// putting each row's amax in HiF8's top 3-bit-mantissa binade: pow2
    /// (default) or none.
    #[arg(long)]
    pub hif8_scale: Option<String>,
    /// Scale search for 4-bit weights: per block, the spec's scale or a
    /// neighbour (and for HiF4 the micro-exponents), whichever encodes the
    /// weights with the least squared error; with calibration inputs
    /// (`--calib` / `--inputs`), each weight's error weighted by its input
    /// channel's mean square activation.
    #[arg(long)]
    pub scale_search: bool,
    /// GPTQ error compensation for the weights: Hessians from calibration
    /// inputs generated (--calib-samples, --seed) from the inputs given to
    /// measure on (`--calib` / `--inputs`), run through the model in order.
    #[arg(long)]
    pub gptq: bool,
    /// Calibration samples for --gptq, --smooth and --scale-search [default: 128].
    #[arg(long, value_name = "N")]
    pub calib_samples: Option<usize>,
    /// GPTQ dampening: a fraction of the Hessian's mean diagonal [default: 0.01].
    #[arg(long, value_name = "FRACTION")]
    pub gptq_damp: Option<f64>,
    /// GPTQ in order of decreasing Hessian diagonal (block encodings fixed
    /// up front from the original weights).
    #[arg(long)]
    pub gptq_act_order: bool,
    /// SmoothQuant: migrate activation outliers into the weights with
    /// migration strength ALPHA (0.5 is typical), from calibration maxima,
    /// where the factors fold into the preceding RMSNorm (W4A4/W8A8 only).
    #[arg(long, value_name = "ALPHA")]
    pub smooth: Option<f32>,
    /// Seed of the calibration inputs [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Do not quantize layers whose node or weight name matches (repeatable).
    /// Given at all, it replaces the default exclusions; `--exclude ''`
    /// excludes nothing.
    #[arg(long, value_name = "REGEX")]
    pub exclude: Vec<String>,
    /// Per-layer format, REGEX=FORMAT (repeatable; `none`: unquantized, see --unquantized). Beats
    /// the defaults and --exclude.
    #[arg(long = "override", value_name = "REGEX=FORMAT")]
    pub overrides: Vec<String>,
    /// Quantize every linear layer, the output head and conditioning layers too.
    #[arg(long)]
    pub quantize_all: bool,
    /// What the linear layers a scheme leaves unquantized (the output head,
    /// conditioning layers, --exclude, REGEX=none) compute in: bf16 (weights
    /// and activations rounded to bf16, products summed in f32; the default)
    /// or f32.
    #[arg(long, value_name = "bf16|f32")]
    pub unquantized: Option<String>,
    /// Options file (default: `lpc.toml` in the current directory, if any);
    /// command-line options win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
}

/// `lpc.toml`: the same options as the command line.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileOptions {
    pub format: Option<String>,
    pub weights: Option<String>,
    pub activations: Option<String>,
    pub rounding: Option<String>,
    pub variant: Option<String>,
    pub rotate: Option<String>,
    pub hif8_scale: Option<String>,
    pub scale_search: Option<bool>,
    pub gptq: Option<bool>,
    pub gptq_act_order: Option<bool>,
    pub smooth: Option<f32>,
    /// Present (even empty) replaces the default exclusions.
    pub exclude: Option<Vec<String>>,
    #[serde(rename = "override")]
    pub overrides: Option<Vec<String>>,
    pub quantize_all: Option<bool>,
    pub unquantized: Option<String>,
    pub calib_samples: Option<usize>,
    pub gptq_damp: Option<f64>,
    pub seed: Option<u64>,
}

fn parse_format(
    name: &str,
    rounding: Option<&str>,
    variant: Option<&str>,
) -> Result<Option<Format>, String> {
    if name == "none" {
        return Ok(None);
    }
    let (r, v) = if name == "hif4" {
        (None, variant)
    } else {
        (rounding, None)
    };
    Format::parse(name, r, v)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn regex(s: &str, flag: &str) -> Result<Regex, String> {
    Regex::new(s).map_err(|e| {
        format!(
            "{flag} `{s}`: not a valid regex: {}",
            e.to_string().lines().last().unwrap_or("")
        )
    })
}

impl QuantArgs {
    /// These options over those of the config file (`--config`, or `lpc.toml`
    /// in the current directory): the command line wins field by field.
    pub fn resolved(&self) -> Result<QuantArgs, String> {
        let path = match &self.config {
            Some(p) => Some(p.clone()),
            None => Some(std::path::PathBuf::from("lpc.toml")).filter(|p| p.is_file()),
        };
        let Some(path) = path else {
            return Ok(self.clone());
        };
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let f: FileOptions = toml::from_str(&text)
            .map_err(|e| format!("{}: {}", path.display(), e.to_string().replace('\n', " ")))?;
        let pick = |cli: &Option<String>, file: Option<String>| cli.clone().or(file);
        let exclude_given = !self.exclude.is_empty();
        Ok(QuantArgs {
            format: pick(&self.format, f.format),
            weights: pick(&self.weights, f.weights),
            activations: pick(&self.activations, f.activations),
            rounding: pick(&self.rounding, f.rounding),
            variant: pick(&self.variant, f.variant),
            rotate: pick(&self.rotate, f.rotate),
            hif8_scale: pick(&self.hif8_scale, f.hif8_scale),
            scale_search: self.scale_search || f.scale_search.unwrap_or(false),
            gptq: self.gptq || f.gptq.unwrap_or(false),
            gptq_act_order: self.gptq_act_order || f.gptq_act_order.unwrap_or(false),
            calib_samples: self.calib_samples.or(f.calib_samples),
            smooth: self.smooth.or(f.smooth),
            gptq_damp: self.gptq_damp.or(f.gptq_damp),
            seed: self.seed.or(f.seed),
            exclude: if exclude_given {
                self.exclude.clone()
            } else {
                // An empty list in the file means "exclude nothing".
                f.exclude
                    .map(|v| if v.is_empty() { vec![String::new()] } else { v })
                    .unwrap_or_default()
            },
            overrides: if self.overrides.is_empty() {
                f.overrides.unwrap_or_default()
            } else {
                self.overrides.clone()
            },
            quantize_all: self.quantize_all || f.quantize_all.unwrap_or(false),
            unquantized: pick(&self.unquantized, f.unquantized),
            config: None,
        })
    }

    /// Is anything to be quantized?
    pub fn active(&self) -> bool {
        self.format.as_deref().is_some_and(|f| f != "none")
            || self.weights.as_deref().is_some_and(|f| f != "none")
    }

    pub fn config(&self) -> Result<QuantConfig, String> {
        let (r, v) = (self.rounding.as_deref(), self.variant.as_deref());
        let base = self.format.as_deref().unwrap_or("none");
        let wname = self.weights.as_deref().unwrap_or(base);
        let aname = self.activations.as_deref().unwrap_or(base);
        let names = [wname, aname];
        if r.is_some() && !names.iter().any(|n| *n == "mxfp4" || *n == "hif8") {
            return Err("--rounding applies to mxfp4 and hif8 only".into());
        }
        if v.is_some() && !names.contains(&"hif4") {
            return Err("--variant applies to hif4 only".into());
        }
        let weights = parse_format(wname, r, v)?;
        let activations = parse_format(aname, r, v)?;
        if weights.is_none() && activations.is_some() {
            return Err(
                "activations cannot be quantized without weights (give --format or --weights)"
                    .into(),
            );
        }
        let four_bit = weights.is_some_and(|f| f.block_len() > 1);
        let rotate = match self.rotate.as_deref() {
            None => four_bit,
            Some("hadamard") => true,
            Some("none") => false,
            Some(o) => return Err(format!("--rotate {o}: expected hadamard or none")),
        };
        let hif8_scale = match self.hif8_scale.as_deref() {
            None | Some("pow2") => true,
            Some("none") => false,
            Some(o) => return Err(format!("--hif8-scale {o}: expected pow2 or none")),
        };
        let exclude = if self.exclude.is_empty() {
            None
        } else {
            Some(
                self.exclude
                    .iter()
                    .filter(|s| !s.is_empty())
                    .map(|s| regex(s, "--exclude"))
                    .collect::<Result<_, _>>()?,
            )
        };
        let overrides = self
            .overrides
            .iter()
            .map(|o| {
                let (re, f) = o
                    .rsplit_once('=')
                    .ok_or_else(|| format!("--override {o}: expected REGEX=FORMAT"))?;
                Ok((
                    regex(re, "--override")?,
                    parse_format(f, r, v).map_err(|e| format!("--override {o}: {e}"))?,
                ))
            })
            .collect::<Result<_, String>>()?;
        let unquantized_bf16 = match self.unquantized.as_deref() {
            None | Some("bf16") => true,
            Some("f32") => false,
            Some(o) => return Err(format!("--unquantized {o}: expected bf16 or f32")),
        };
        Ok(QuantConfig {
            unquantized_bf16,
            weights,
            activations,
            rotate,
            hif8_scale,
            scale_search: self.scale_search,
            search_calibration: self.scale_search.then(|| {
                lpc_passes::quant_policy::SearchCalibration {
                    importance: Default::default(),
                    samples: self.calib_samples.unwrap_or(128),
                    seed: self.seed.unwrap_or(0),
                }
            }),
            gptq: self.gptq.then(|| lpc_passes::quant_policy::Gptq {
                packed: Default::default(),
                options: lpc_passes::gptq::Options {
                    damp: self.gptq_damp.unwrap_or(0.01),
                    act_order: self.gptq_act_order,
                    search: false,
                },
                samples: self.calib_samples.unwrap_or(128),
                seed: self.seed.unwrap_or(0),
            }),
            smooth: match self.smooth {
                Some(a) if !(0.0..=1.0).contains(&a) => {
                    return Err(format!("--smooth {a}: ALPHA must be in [0, 1]"))
                }
                a => a.map(|alpha| lpc_passes::smooth::SmoothConfig {
                    alpha,
                    act_max: Default::default(),
                    samples: self.calib_samples.unwrap_or(128),
                    seed: self.seed.unwrap_or(0),
                }),
            },
            exclude,
            overrides,
            quantize_all: self.quantize_all,
        })
    }
}

/// The effective configuration, for `-v`.
pub fn describe(cfg: &QuantConfig) -> String {
    let f = |x: Option<Format>| x.map_or("none".to_string(), |f| f.to_string());
    let ex = match &cfg.exclude {
        None => "defaults (output head, conditioning layers)".to_string(),
        Some(v) if v.is_empty() => "nothing".to_string(),
        Some(v) => v
            .iter()
            .map(|r| r.as_str().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    let ov: Vec<String> = cfg
        .overrides
        .iter()
        .map(|(r, f2)| format!("{}={}", r.as_str(), f(*f2)))
        .collect();
    format!(
        "quantization: weights {}, activations {}, rotate {}, hif8 scale {}{}, exclude {}, overrides [{}]{}, unquantized in {}\n",
        f(cfg.weights),
        f(cfg.activations),
        if cfg.rotate { "hadamard" } else { "none" },
        if cfg.hif8_scale { "pow2" } else { "none" },
        match (&cfg.gptq, cfg.scale_search) {
            (Some(g), s) => format!(
                "{}, gptq (damp {}, {} samples, seed {}{})",
                if s { ", scale search" } else { "" },
                g.options.damp,
                g.samples,
                g.seed,
                if g.options.act_order { ", act-order" } else { "" }
            ),
            (None, true) => match &cfg.search_calibration {
                Some(c) => format!(
                    ", scale search (activation-weighted, {} samples, seed {})",
                    c.samples, c.seed
                ),
                None => ", scale search".to_string(),
            },
            (None, false) => String::new(),
        } + &cfg
            .smooth
            .as_ref()
            .map(|s| format!(", smooth alpha {}", s.alpha))
            .unwrap_or_default(),
        ex,
        ov.join(", "),
        if cfg.quantize_all {
            ", quantize-all"
        } else {
            ""
        },
        if cfg.unquantized_bf16 { "bf16" } else { "f32" }
    )
}
