#!/usr/bin/env python3
"""onnxruntime's GEMMs on the Qwen3 shapes of the qgemm benchmark: the
baselines of the kernel table in scripts/bench.sh.

    bench_ort_matmul.py time OUT.json      # time onnxruntime, write OUT.json
    bench_ort_matmul.py join QGEMM.json ORT.json OUT.json   # the joined table

`time` builds, with the onnx helper API, for every K x N shape:
  - fp32: `MatMul(A[M, K], B[K, N])`, B an fp32 initializer;
  - MatMulNBits (com.microsoft): B quantized to 4 bits in blocks of 32 along
    K (symmetric, one fp32 scale per block, zero point 8), accuracy_level 4
    (activations quantized to int8 per block: onnxruntime's fastest 4-bit
    CPU path, VNNI where the CPU has it). Its output is checked against
    A @ dequantized(B) before it is timed.
and times both at every M and thread count: median, min and max of RUNS runs
after one warm-up, each from cold caches (a buffer twice the L3 is read
first, as the qgemm benchmark does). Environment, as for the qgemm bench:
LPC_BENCH_SHAPES (KxN,...), LPC_BENCH_M, LPC_BENCH_THREADS, LPC_BENCH_RUNS.

`join` prints lpc's kernels (target/bench/qgemm.json) beside these baselines:
time, and the speed-up of lpc over onnxruntime fp32 and over MatMulNBits.
"""
import json
import os
import sys
import time

import numpy as np

SHAPES = "5120x25600,25600x5120,5120x5120,1024x3072,3072x1024"


def env_list(name, default, conv):
    return [conv(x) for x in os.environ.get(name, default).split(",") if x]


def l3_bytes():
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            s = f.read().strip()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1], 1)
        return int(s.rstrip("KMG")) * mult
    except (OSError, ValueError):
        return 64 << 20


def fp32_model(k, n, w):
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["Y"])],
        "matmul",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(w, "B")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def quantize_nbits(w, block=32):
    """w [K, N] -> (B uint8 [N, K/block, block/2], scales f32 [N * K/block],
    dequantized w [K, N]): symmetric 4-bit, zero point 8, element 2i in the
    low nibble of byte i, 2i+1 in the high nibble."""
    k, n = w.shape
    wt = w.T.reshape(n, k // block, block)
    amax = np.abs(wt).max(axis=2, keepdims=True)
    scale = np.where(amax > 0, amax / 7.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(wt / scale), -8, 7).astype(np.int32) + 8
    packed = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).astype(np.uint8)
    deq = ((q - 8) * scale).reshape(n, k).T.astype(np.float32)
    return packed, scale.reshape(-1), deq


def nbits_model(k, n, packed, scales):
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node(
        "MatMulNBits",
        ["A", "B", "scales"],
        ["Y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=4,
        block_size=32,
        accuracy_level=4,
    )
    g = helper.make_graph(
        [node],
        "matmulnbits",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "scales")],
    )
    return helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )


def session(model, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )


def timed(s, a, runs, flush):
    s.run(None, {"A": a})
    t = []
    for _ in range(runs):
        # Read through (as lpc's CacheFlush): one byte of every cache line
        # of twice the L3, leaving clean lines; the buffer was written once.
        int(flush[::64].sum())
        start = time.perf_counter()
        s.run(None, {"A": a})
        t.append((time.perf_counter() - start) * 1e3)
    t.sort()
    return {"ms": t[len(t) // 2], "min_ms": t[0], "max_ms": t[-1]}


def time_all(out):
    import onnxruntime as ort

    shapes = [tuple(int(v) for v in s.split("x")) for s in env_list("LPC_BENCH_SHAPES", SHAPES, str)]
    ms = env_list("LPC_BENCH_M", "1,16,512", int)
    threads = env_list("LPC_BENCH_THREADS", "1,2", int)
    runs = int(os.environ.get("LPC_BENCH_RUNS", "5"))
    flush = np.ones(2 * l3_bytes(), dtype=np.uint8)
    rng = np.random.default_rng(0)
    rows = []
    for k, n in shapes:
        w = (rng.standard_normal((k, n), dtype=np.float32) * 0.02).astype(np.float32)
        packed, scales, deq = quantize_nbits(w)
        models = {"ort_fp32": fp32_model(k, n, w), "ort_matmulnbits_q4_b32": nbits_model(k, n, packed, scales)}
        del w
        for t in threads:
            for name, model in models.items():
                s = session(model, t)
                for m in ms:
                    a = rng.standard_normal((m, k), dtype=np.float32)
                    if name != "ort_fp32" and t == threads[0]:
                        # The packing is MatMulNBits' own: its output must be
                        # A @ dequantized(B) (up to its int8 activations).
                        y = s.run(None, {"A": a})[0]
                        ref = a @ deq
                        err = np.sqrt(np.mean((y - ref) ** 2) / np.mean(ref**2))
                        if err > 0.05:
                            sys.exit(f"MatMulNBits {k}x{n} M={m}: relative error {err:.3f} vs A @ dequantized(B)")
                    r = timed(s, a, runs, flush)
                    r.update({"baseline": name, "m": m, "k": k, "n": n, "threads": t})
                    print(f"{name:24s} M={m:4d} {k:5d}x{n:<5d} T={t}: {r['ms']:10.3f} ms "
                          f"({r['min_ms']:.3f}-{r['max_ms']:.3f})", flush=True)
                    rows.append(r)
                del s
        del models, deq
    with open(out, "w") as f:
        json.dump({"onnxruntime": ort.__version__, "runs": runs, "rows": rows}, f, indent=1)
    print(f"wrote {out}")


def join(qgemm, ortj, out):
    with open(qgemm) as f:
        q = json.load(f)
    with open(ortj) as f:
        o = json.load(f)
    base = {(r["baseline"], r["m"], r["k"], r["n"], r["threads"]): r for r in o["rows"]}
    print(f"{'fmt':6s} {'M':>4s} {'KxN':>11s} {'T':>2s} {'lpc ms':>10s} {'ort fp32':>10s} "
          f"{'vs fp32':>8s} {'MatMulNBits':>11s} {'vs NBits':>8s}")
    rows = []
    for r in q["kernels"]:
        key = (r["m"], r["k"], r["n"], r["threads"])
        f32 = base.get(("ort_fp32",) + key)
        nb = base.get(("ort_matmulnbits_q4_b32",) + key)
        row = {
            "format": r["format"], "m": r["m"], "k": r["k"], "n": r["n"], "threads": r["threads"],
            "lpc_ms": r["ms"], "lpc_min_ms": r["min_ms"], "lpc_max_ms": r["max_ms"],
            "limit_fraction": r.get("limit_fraction"),
            "ort_fp32_ms": f32 and f32["ms"],
            "speedup_vs_ort_fp32": f32 and f32["ms"] / r["ms"],
            "ort_matmulnbits_ms": nb and nb["ms"],
            "speedup_vs_matmulnbits": nb and nb["ms"] / r["ms"],
        }
        rows.append(row)

        def fmt(v, spec):
            return format(v, spec) if v is not None else "-"

        print(f"{r['format']:6s} {r['m']:4d} {str(r['k']) + 'x' + str(r['n']):>11s} {r['threads']:2d} "
              f"{r['ms']:10.3f} {fmt(row['ort_fp32_ms'], '10.3f'):>10s} "
              f"{fmt(row['speedup_vs_ort_fp32'], '7.2f'):>7s}x {fmt(row['ort_matmulnbits_ms'], '11.3f'):>11s} "
              f"{fmt(row['speedup_vs_matmulnbits'], '7.2f'):>7s}x")
    with open(out, "w") as f:
        json.dump({"onnxruntime": o["onnxruntime"], "rows": rows}, f, indent=1)
    print(f"wrote {out}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "time":
        time_all(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "join":
        join(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
