#!/usr/bin/env python3
"""Times onnxruntime (fp32, CPU) on a model and an input folder of .npy files:
the baseline of scripts/bench.sh.

    bench_ort.py MODEL.onnx INPUT_DIR THREADS RUNS

Prints one JSON object: median, min and max milliseconds of RUNS timed runs
after one warm-up, with intra-op threads = THREADS.
"""
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    model, inputs, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    feed = {}
    for i in s.get_inputs():
        f = os.path.join(inputs, i.name.replace("/", "_") + ".npy")
        feed[i.name] = np.load(f)
    s.run(None, feed)
    t = []
    for _ in range(runs):
        a = time.perf_counter()
        s.run(None, feed)
        t.append((time.perf_counter() - a) * 1e3)
    t.sort()
    print(json.dumps({"median_ms": t[len(t) // 2], "min_ms": t[0], "max_ms": t[-1],
                      "onnxruntime": ort.__version__}))


if __name__ == "__main__":
    main()
