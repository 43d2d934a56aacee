"""What bitsandbytes' CUDA backend launches per custom op, counted by running it on the CPU.

bitsandbytes registers its ops (``torch.ops.bitsandbytes.*``) with one Python implementation
per device. The CUDA implementations (``bitsandbytes/backends/cuda/ops.py``) allocate with
torch, call the C library (``lib.c*``, one CUDA kernel each) and sometimes read device data
back (``if outliers.any():``), while the CPU implementations differ. Here the CUDA module's
source is executed into a private namespace with

- ``lib`` replaced by a recorder (every ``lib.c*`` call counts as one kernel; the C library
  is never called, so outputs hold garbage, which does not change the control flow of the
  paths counted here except where noted),
- ``torch._C._cuda_getCurrentRawStream``, ``_cuda_device_of`` and ``CUBLAS_Context``
  replaced by recorders (host work, no kernel),
- ``register_kernel`` replaced by a collector (nothing is registered with torch),

and each implementation is called on CPU tensors under a dispatch mode that counts the aten
ops issued inside: each aten op that launches a kernel on CUDA (not a view, not an
allocation, see :data:`qtsim.calibration.trace.ops.NO_KERNEL_OPS`) counts one kernel, and each
op in :data:`~qtsim.calibration.trace.ops.SYNC_OPS` one host-device synchronisation. A
``torch.ops.bitsandbytes.*`` op called inside resolves to its CUDA implementation, or to the
backend-independent ("default") one where the CUDA backend has none, as torch would on CUDA.

Importing this module does not import torch or bitsandbytes.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import sys
from dataclasses import dataclass, field
from typing import Any

from qtsim.calibration.trace.ops import classify, decompose_if_composite, leaf_name
from qtsim.errors import MeasurementError

_MODULES = ("bitsandbytes.backends.cuda.ops", "bitsandbytes.backends.default.ops")


@dataclass
class CudaCount:
    """Counts for one call of a bitsandbytes op as its CUDA backend would run it.

    ``kernels``: kernels launched (aten kernels + ``lib.c*`` calls); ``syncs``: host-device
    synchronisations; ``aten_ops``: aten ops dispatched inside (views included);
    ``lib_calls``: C-library calls; ``stream_queries``: ``_get_raw_stream`` calls;
    ``ops``: the op-name sequence, ``lib:<name>`` for C calls.
    """

    kernels: int = 0
    syncs: int = 0
    aten_ops: int = 0
    lib_calls: int = 0
    stream_queries: int = 0
    ops: list[str] = field(default_factory=list)

    def as_dict(self, method: str = "executed") -> dict[str, Any]:
        return {"kernels": self.kernels, "syncs": self.syncs, "aten_ops": self.aten_ops,
                "lib_calls": self.lib_calls, "method": method, "ops": list(self.ops)}


class _LibRecorder:
    """Stands in for bitsandbytes' ctypes library: attributes are callables that record."""

    def __init__(self):
        self.sink: CudaCount | None = None

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        rec = self

        class _Fn:
            argtypes = None
            restype = None

            def __call__(self, *args):
                if rec.sink is not None:
                    rec.sink.lib_calls += 1
                    rec.sink.kernels += 1
                    rec.sink.ops.append(f"lib:{name}")
                return 0

        fn = _Fn()
        object.__setattr__(self, name, fn)
        return fn


class _FakeCublas:
    @classmethod
    def get_instance(cls):
        return cls()

    def get_context(self, device):
        return None


def _source(modname: str) -> tuple[str, str]:
    spec = importlib.util.find_spec(modname)
    if spec is None or spec.origin is None:
        raise MeasurementError(f"cannot find {modname} (is bitsandbytes installed?)")
    with open(spec.origin, encoding="utf-8") as f:
        return f.read(), spec.origin


class BnbCuda:
    """The CUDA (and default) implementations of bitsandbytes' ops, runnable on the CPU."""

    def __init__(self):
        import bitsandbytes  # noqa: F401 - registers the ops and loads the real modules
        import bitsandbytes._ops as bops
        import bitsandbytes.functional as bf
        import torch

        self.lib = _LibRecorder()
        self.impls: dict[str, dict[str, Any]] = {"cuda": {}, "default": {}}
        self.namespaces: dict[str, dict] = {}
        saved = {
            "cext": sys.modules["bitsandbytes.cextension"].lib,
            "reg": bops.register_kernel,
            "cublas": bf.CUBLAS_Context,
            "devof": bf._cuda_device_of,
            "compile": torch.compile,
            "stream": getattr(torch._C, "_cuda_getCurrentRawStream", None),
        }

        def collector(backend):
            def register_kernel(op, device, *a):
                target = self.impls["cuda" if device == "cuda" else "default"]

                def deco(fn):
                    target.setdefault(op.split("::")[-1], fn)
                    return fn

                return deco(a[0]) if a else deco

            return register_kernel

        def no_compile(fn=None, **kw):
            return fn if fn is not None else (lambda f: f)

        try:
            sys.modules["bitsandbytes.cextension"].lib = self.lib
            bf.CUBLAS_Context = _FakeCublas
            bf._cuda_device_of = lambda a: contextlib.nullcontext()
            torch.compile = no_compile
            torch._C._cuda_getCurrentRawStream = self._stream
            for modname in _MODULES:
                bops.register_kernel = collector(modname)
                src, origin = _source(modname)
                ns: dict[str, Any] = {"__name__": modname + "_qtsim_counted",
                                      "__package__": modname.rsplit(".", 1)[0],
                                      "__file__": origin}
                exec(compile(src, origin, "exec"), ns)  # noqa: S102 - bnb's own source
                self.namespaces[modname] = ns
        finally:
            sys.modules["bitsandbytes.cextension"].lib = saved["cext"]
            bops.register_kernel = saved["reg"]
            bf.CUBLAS_Context = saved["cublas"]
            bf._cuda_device_of = saved["devof"]
            torch.compile = saved["compile"]
            if saved["stream"] is None:
                del torch._C._cuda_getCurrentRawStream
            else:
                torch._C._cuda_getCurrentRawStream = saved["stream"]
        # _ops.py itself registers one default kernel (int8_vectorwise_dequant)
        self.impls["default"].setdefault("int8_vectorwise_dequant", _int8_vectorwise_dequant)
        self._sink: CudaCount | None = None

    def _stream(self, index=None):
        if self._sink is not None:
            self._sink.stream_queries += 1
        return 0

    def impl_for(self, op: str):
        """The Python function CUDA would run for ``op`` (overload name allowed, e.g.
        ``gemv_4bit.out``) and which backend it comes from."""
        for backend in ("cuda", "default"):
            fn = self.impls[backend].get(op)
            if fn is not None:
                return fn, backend
        raise MeasurementError(f"bitsandbytes op {op!r} has no CUDA or default implementation")

    def count(self, op: str, args=(), kwargs=None) -> CudaCount:
        """Run the CUDA implementation of ``op`` on (CPU) ``args`` and count what it issues."""
        return self.count_callable(self.impl_for(op)[0], args, kwargs)

    def count_callable(self, fn, args=(), kwargs=None) -> CudaCount:
        """Run ``fn`` (a function of the CUDA backend module) on ``args`` and count."""
        from torch.utils._python_dispatch import TorchDispatchMode

        sink = CudaCount()
        outer = self

        class _Count(TorchDispatchMode):
            def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func.namespace == "bitsandbytes":
                    name = func.name().split("::")[-1]
                    if name.endswith(".default"):
                        name = name[: -len(".default")]
                    sink.ops.append(f"bnb:{name}")
                    fn, _ = outer.impl_for(name)
                    with self:
                        return fn(*args, **kwargs)

                out = decompose_if_composite(self, func, args, kwargs)
                if out is not NotImplemented:
                    return out
                kind = classify(func, args)
                sink.aten_ops += 1
                sink.ops.append(leaf_name(func, args))
                sink.kernels += kind.kernel
                sink.syncs += kind.sync
                return func(*args, **kwargs)

        self._sink = self.lib.sink = sink
        try:
            with _Count():
                fn(*args, **(kwargs or {}))
        finally:
            self._sink = self.lib.sink = None
        return sink


def _int8_vectorwise_dequant(A, stats):
    # bitsandbytes/_ops.py registers this one "default" kernel itself (same body).
    return A * stats.view(-1, 1) * 7.874015718698502e-3


def lib_calls_by_ast() -> dict[str, int]:
    """``lib.c*`` call sites per registered CUDA op, read from the CUDA backend's source
    (following calls into the module's helper functions once). The fallback when an op
    cannot be executed; the method is then ``"ast"``."""
    src, _ = _source(_MODULES[0])
    tree = ast.parse(src)
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}

    def direct(node) -> tuple[int, set[str]]:
        n, called = 0, set()
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call):
                f = sub.func
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                        and f.value.id == "lib" and f.attr.startswith("c"):
                    n += 1
                elif isinstance(f, ast.Name) and f.id in funcs:
                    called.add(f.id)
        # ``fn = lib.cX`` then ``fn(...)``: one launch per branch; count one
        if any(isinstance(s, ast.Assign) and isinstance(s.value, ast.Attribute)
               and isinstance(s.value.value, ast.Name) and s.value.value.id == "lib"
               for s in ast.walk(node)):
            n += 1
        return n, called

    out: dict[str, int] = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            if isinstance(dec, ast.Call) and getattr(dec.func, "id", "") == "register_kernel" \
                    and len(dec.args) == 2 and getattr(dec.args[1], "value", None) == "cuda":
                op = dec.args[0].value.split("::")[-1]
                n, called = direct(node)
                for name in called:
                    n += direct(funcs[name])[0]
                out[op] = n
    return out


__all__ = ["BnbCuda", "CudaCount", "lib_calls_by_ast"]
