#!/usr/bin/env python3
"""The accuracy table of the quantization methods, per fixture and format.

Runs `lpc eval` (release build) on every fixture model in
tests/fixtures/models for each 4-bit format, method by method, cumulatively:
round-to-nearest without rotation, + Hadamard rotation, + scale search,
+ GPTQ, + smoothing, rotation with GPTQ alone, and the auto-mixed result on
top of all of them.
Prints a Markdown table (mean layer output SQNR, end-to-end SQNR, and for
the Qwen3 fixtures logits KL and top-1 agreement), then W8A8 HiF8 with and
without the power-of-two row scales (mean weight SQNR, end-to-end SQNR), and
writes the reports' numbers to target/accuracy/table.json.

Usage: scripts/accuracy_table.py [--formats mxfp4,hif4] [--fixtures a,b]
       [--auto-mixed sqnr>=DB]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "tests", "fixtures", "models")
LPC = os.path.join(ROOT, "target", "release", "lpc")

# (label, extra arguments): each row adds its method to the one before,
# except "alone", which is rotation and that method only.
METHODS = [
    ("RTN", ["--rotate", "none"]),
    ("+rotation", []),
    ("+scale search", ["--scale-search"]),
    ("+GPTQ", ["--scale-search", "--gptq"]),
    ("rotation + GPTQ alone", ["--gptq"]),
    ("+smoothing", ["--scale-search", "--gptq", "--smooth", "0.5"]),
]


def evaluate(model, fmt, extra):
    with tempfile.TemporaryDirectory() as d:
        report = os.path.join(d, "r.json")
        cmd = [LPC, "eval", os.path.join(MODELS, model, "model.onnx"),
               "--inputs", os.path.join(MODELS, model, "inputs"),
               "--format", fmt, "--report", report] + extra
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr}")
        with open(report) as f:
            r = json.load(f)
    layers = r["layers"]
    out = r["outputs"][0]
    am = r.get("auto_mixed")
    return {
        "weight_sqnr_db": sum(l["weight_sqnr_db"] for l in layers) / max(len(layers), 1),
        "layer_sqnr_db": sum(l["output_sqnr_db"] for l in layers) / max(len(layers), 1),
        "sqnr_db": out["sqnr_db"],
        "kl": out.get("kl_divergence"),
        "top1": out.get("top1_agreement"),
        "bits": r["effective_bits_per_weight"],
        "wide": None if am is None else len(am["wide_layers"]),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--formats", default="mxfp4,hif4")
    ap.add_argument("--fixtures", default=",".join(sorted(
        m for m in os.listdir(MODELS) if os.path.isdir(os.path.join(MODELS, m)))))
    ap.add_argument("--auto-mixed", default="sqnr>=25")
    a = ap.parse_args()
    if not os.path.exists(LPC):
        sys.exit("build the release binary first: cargo build --release -p lpc")
    rows, table = [], {}
    for model in a.fixtures.split(","):
        for fmt in a.formats.split(","):
            best = [m for m in METHODS if m[0] == "+smoothing"][0][1]
            for label, extra in METHODS + [
                (f"auto-mixed {a.auto_mixed}", best + ["--auto-mixed", a.auto_mixed])
            ]:
                r = evaluate(model, fmt, extra)
                table.setdefault(model, {}).setdefault(fmt, {})[label] = r
                kl = "" if r["kl"] is None else f"{r['kl']:.4f}"
                top1 = "" if r["top1"] is None else f"{r['top1']:.3f}"
                wide = "" if r["wide"] is None else f" ({r['wide']} wide)"
                rows.append(f"| {model} | {fmt} | {label}{wide} | {r['layer_sqnr_db']:.2f} "
                            f"| {r['sqnr_db']:.2f} | {kl} | {top1} | {r['bits']:.2f} |")
                print(rows[-1], flush=True, file=sys.stderr)
    print("| fixture | format | method | mean layer output SQNR (dB) | output SQNR (dB) "
          "| logits KL | top-1 | bits/weight |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("| fixture | HiF8 W8A8 | mean weight SQNR (dB) | output SQNR (dB) |")
    print("|---|---|---|---|")
    for model in a.fixtures.split(","):
        for scale in ["none", "pow2"]:
            r = evaluate(model, "hif8", ["--hif8-scale", scale])
            table.setdefault(model, {}).setdefault("hif8", {})[scale] = r
            print(f"| {model} | scale {scale} | {r['weight_sqnr_db']:.2f} | {r['sqnr_db']:.2f} |")
    os.makedirs(os.path.join(ROOT, "target", "accuracy"), exist_ok=True)
    with open(os.path.join(ROOT, "target", "accuracy", "table.json"), "w") as f:
        json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
