#!/usr/bin/env python3
"""Runs an lpc-compiled model on .npy inputs with numpy and ctypes only.

    python3 run_model.py MODEL.so INPUT_DIR OUTPUT_DIR [THREADS]

Inputs are read from INPUT_DIR/<input name>.npy ('/' in names becomes '_'),
outputs written to OUTPUT_DIR/<output name>.npy. The weights are the .lpcw
file beside the library, or the embedded ones when there is none. The C API
is the one in the generated model.h.
"""
import ctypes
import os
import sys

import numpy as np

MAX_RANK = 8
# ONNX TensorProto codes <-> numpy dtypes.
DTYPES = {
    1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64,
    9: np.bool_, 10: np.float16, 11: np.float64,
}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}


class Tensor(ctypes.Structure):
    _fields_ = [
        ("dtype", ctypes.c_int32),
        ("rank", ctypes.c_int32),
        ("dims", ctypes.c_int64 * MAX_RANK),
        ("data", ctypes.c_void_p),
    ]


class Options(ctypes.Structure):
    _fields_ = [("num_threads", ctypes.c_int32)]


class Model:
    """A loaded library; `run` maps numpy arrays to numpy arrays."""

    def __init__(self, path, threads=0):
        self.lib = ctypes.CDLL(os.path.abspath(path))
        L = self.lib
        L.lpc_model_load.restype = ctypes.c_void_p
        L.lpc_model_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(Options)]
        L.lpc_model_run.restype = ctypes.c_int
        L.lpc_model_run.argtypes = [ctypes.c_void_p, ctypes.POINTER(Tensor), ctypes.c_int64,
                                    ctypes.POINTER(Tensor), ctypes.c_int64]
        L.lpc_model_free.argtypes = [ctypes.c_void_p]
        L.lpc_last_error.restype = ctypes.c_char_p
        for f in ("lpc_model_num_inputs", "lpc_model_num_outputs"):
            getattr(L, f).restype = ctypes.c_int64
            getattr(L, f).argtypes = [ctypes.c_void_p]
        for f in ("lpc_model_input_name", "lpc_model_output_name"):
            getattr(L, f).restype = ctypes.c_char_p
            getattr(L, f).argtypes = [ctypes.c_void_p, ctypes.c_int64]
        for f in ("lpc_model_input_dtype", "lpc_model_output_dtype"):
            getattr(L, f).restype = ctypes.c_int32
            getattr(L, f).argtypes = [ctypes.c_void_p, ctypes.c_int64]
        weights = os.path.splitext(path)[0] + ".lpcw"
        w = weights.encode() if os.path.exists(weights) else None
        self.h = L.lpc_model_load(w, ctypes.byref(Options(threads)))
        if not self.h:
            raise RuntimeError(L.lpc_last_error().decode())
        self.inputs = [L.lpc_model_input_name(self.h, i).decode()
                       for i in range(L.lpc_model_num_inputs(self.h))]
        self.outputs = [L.lpc_model_output_name(self.h, i).decode()
                        for i in range(L.lpc_model_num_outputs(self.h))]

    def run(self, arrays):
        """arrays: one numpy array per input, in order; returns copies of the outputs."""
        arrays = [np.ascontiguousarray(a) for a in arrays]
        ins = (Tensor * max(len(arrays), 1))()
        for t, a in zip(ins, arrays):
            t.dtype = CODES[a.dtype]
            t.rank = a.ndim
            for k, d in enumerate(a.shape):
                t.dims[k] = d
            t.data = a.ctypes.data
        outs = (Tensor * max(len(self.outputs), 1))()
        rc = self.lib.lpc_model_run(self.h, ins, len(arrays), outs, len(self.outputs))
        if rc != 0:
            raise RuntimeError(self.lib.lpc_last_error().decode())
        result = []
        for t in outs[: len(self.outputs)]:
            shape = tuple(t.dims[: t.rank])
            dt = np.dtype(DTYPES[t.dtype])
            n = int(np.prod(shape)) if shape else 1
            buf = (ctypes.c_char * (n * dt.itemsize)).from_address(t.data) if n else b""
            result.append(np.frombuffer(buf, dtype=dt).reshape(shape).copy())
        return result

    def __del__(self):
        if getattr(self, "h", None):
            self.lib.lpc_model_free(self.h)
            self.h = None


def file_name(d, name):
    return os.path.join(d, name.replace("/", "_").replace("\\", "_") + ".npy")


def main():
    if len(sys.argv) < 4:
        sys.exit("usage: run_model.py MODEL.so INPUT_DIR OUTPUT_DIR [THREADS]")
    m = Model(sys.argv[1], int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    outs = m.run([np.load(file_name(sys.argv[2], n)) for n in m.inputs])
    for name, a in zip(m.outputs, outs):
        np.save(file_name(sys.argv[3], name), a)
        print(f"{name}: {a.dtype} {list(a.shape)}")


if __name__ == "__main__":
    main()
