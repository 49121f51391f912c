#!/usr/bin/env python3
"""The device side of scripts/gpu-check.sh (python3 + numpy; PyTorch optional).

    gpu_check.py DIR                   # run what DIR holds, write DIR/gpu-report.json
    gpu_check.py --write-matmuls DIR   # (preparation) single-MatMul ONNX models

DIR/cases/<fixture>_<format>/ holds a `--target cuda` library (model.so,
model.lpcw), its inputs and the CPU library's outputs (cpu_out): each output
must agree within 1e-5 of its largest magnitude. DIR/mm_<K>x<N>_<format>.so
are qgemm models, timed at M = 1, 16, 512 beside PyTorch's bf16 matmul, a
bandwidth probe (device-to-device copy) and an int8 tensor-core probe
(torch._int_mm), all in this process.
"""
import glob
import json
import os
import sys
import time

import numpy as np


def write_matmuls(d):
    """y[m, N] = x[m, K] · W[K, N] as ONNX (protobuf written by hand)."""

    def varint(n):
        out = b""
        while True:
            b, n = n & 0x7F, n >> 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out

    def f(num, wire, payload):
        key = varint((num << 3) | wire)
        return key + (varint(payload) if wire == 0 else varint(len(payload)) + payload)

    def s(num, text):
        return f(num, 2, text.encode())

    def vinfo(name, dims):
        shape = b"".join(
            f(1, 2, f(1, 0, x) if isinstance(x, int) else s(2, x)) for x in dims
        )
        return s(1, name) + f(2, 2, f(1, 2, f(1, 0, 1) + f(2, 2, shape)))

    rng = np.random.default_rng(0)
    for k, n in [(5120, 5120), (1024, 3072), (3072, 1024)]:
        w = (rng.standard_normal(k * n) * 0.02).astype("<f4").tobytes()
        init = f(1, 0, k) + f(1, 0, n) + f(2, 0, 1) + s(8, "w") + f(9, 2, w)
        node = s(1, "x") + s(1, "w") + s(2, "y") + s(3, "mm") + s(4, "MatMul")
        graph = (
            f(1, 2, node) + s(2, "qgemm") + f(5, 2, init)
            + f(11, 2, vinfo("x", ["m", k])) + f(12, 2, vinfo("y", ["m", n]))
        )
        model = f(1, 0, 8) + s(2, "lpc-gpu-check") + f(7, 2, graph) + f(8, 2, s(1, "") + f(2, 0, 17))
        with open(os.path.join(d, f"mm_{k}x{n}.onnx"), "wb") as fh:
            fh.write(model)


def check_cases(d, run_model, report):
    ok = True
    for case in sorted(glob.glob(os.path.join(d, "cases", "*"))):
        name = os.path.basename(case)
        try:
            m = run_model.Model(os.path.join(case, "model.so"))
            ins = [np.load(run_model.file_name(os.path.join(case, "inputs"), n)) for n in m.inputs]
            outs = m.run(ins)
        except RuntimeError as e:
            print(f"FAIL {name}: {e}")
            report["cases"].append({"case": name, "error": str(e)})
            ok = False
            continue
        worst = 0.0
        for oname, got in zip(m.outputs, outs):
            want = np.load(run_model.file_name(os.path.join(case, "cpu_out"), oname))
            if got.shape != want.shape:
                worst = float("inf")
                break
            g, w = got.astype(np.float64), want.astype(np.float64)
            scale = max(float(np.max(np.abs(w))) if w.size else 0.0, 1e-30)
            diff = np.where((g == w) | (np.isnan(g) & np.isnan(w)), 0.0, np.abs(g - w))
            worst = max(worst, float(np.max(diff)) / scale if diff.size else 0.0)
        good = worst <= 1e-5
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {name}: max |gpu - cpu| / max |cpu| = {worst:.3e}")
        report["cases"].append({"case": name, "rel_diff": worst, "ok": good})
    return ok


def median_time(fn, reps=10):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2], ts[0], ts[-1]


def bench(d, run_model, report):
    libs = sorted(glob.glob(os.path.join(d, "mm_*.so")))
    if not libs:
        return
    try:
        import torch
    except ImportError:
        torch = None
    probes = {}
    if torch is not None and torch.cuda.is_available():
        a = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
        b = torch.empty_like(a)

        def copy():
            b.copy_(a)
            torch.cuda.synchronize()

        t, _, _ = median_time(copy)
        probes["bandwidth_GBps"] = 2 * a.numel() * 4 / t / 1e9
        x = torch.randint(-8, 8, (8192, 8192), dtype=torch.int8, device="cuda")
        try:
            def imm():
                torch._int_mm(x, x)
                torch.cuda.synchronize()

            t, _, _ = median_time(imm)
            probes["int8_TOPs"] = 2 * 8192**3 / t / 1e12
        except (RuntimeError, AttributeError) as e:
            probes["int8_TOPs_error"] = str(e)
    report["probes"] = probes
    print(json.dumps(probes))
    print(f"{'model':28} {'M':>4} {'lpc ms':>9} {'GB/s':>8} {'TOP/s':>8} {'bf16 ms':>9} {'lpc/bf16':>9}")
    for lib in libs:
        base = os.path.basename(lib)[:-3]
        k, n = (int(v) for v in base.split("_")[1].split("x"))
        wbytes = os.path.getsize(lib[:-3] + ".lpcw")
        m = run_model.Model(lib)
        for rows in (1, 16, 512):
            x = np.random.default_rng(rows).standard_normal((rows, k)).astype(np.float32)
            t, lo, hi = median_time(lambda: m.run([x]))
            row = {
                "model": base, "M": rows, "ms": t * 1e3, "min_ms": lo * 1e3, "max_ms": hi * 1e3,
                "weight_GBps": wbytes / t / 1e9, "TOPs": 2 * rows * k * n / t / 1e12,
            }
            if torch is not None and torch.cuda.is_available():
                xa = torch.randn(rows, k, dtype=torch.bfloat16, device="cuda")
                wb = torch.randn(k, n, dtype=torch.bfloat16, device="cuda")

                def mm():
                    xa @ wb
                    torch.cuda.synchronize()

                tb, _, _ = median_time(mm)
                row["bf16_ms"] = tb * 1e3
                row["ratio_vs_bf16"] = tb / t
            report["qgemm"].append(row)
            print(f"{base:28} {rows:>4} {t*1e3:9.3f} {row['weight_GBps']:8.1f} {row['TOPs']:8.3f} "
                  f"{row.get('bf16_ms', float('nan')):9.3f} {row.get('ratio_vs_bf16', float('nan')):9.3f}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--write-matmuls":
        write_matmuls(sys.argv[2])
        return
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    d = sys.argv[1]
    sys.path.insert(0, d)
    import run_model

    report = {"cases": [], "qgemm": []}
    ok = check_cases(d, run_model, report)
    bench(d, run_model, report)
    with open(os.path.join(d, "gpu-report.json"), "w") as fh:
        json.dump(report, fh, indent=1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
