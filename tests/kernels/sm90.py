"""Compile Triton kernels for an H100/H200 (sm_90) without a GPU.

The interpreter runs a kernel's Python, not Triton's compiler, so code only the compiler rejects (types,
layouts, shared memory) would pass the CPU tests. This builds the real cubin instead. It runs in a fresh
process because ``TRITON_INTERPRET=1`` (set for the test session) replaces ``@triton.jit`` functions when
Triton loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping

_SCRIPT = """
import importlib, inspect, json, sys
import triton
from triton.backends.compiler import GPUTarget
request = json.loads(sys.argv[1])
module = importlib.import_module(request["module"])
sizes = {}
for name, spec in request["kernels"].items():
    kernel = getattr(module, name)
    names = list(inspect.signature(kernel.fn).parameters)
    constants, types = spec["constants"], spec["types"]
    signature = {n: "constexpr" if n in constants else types.get(n, "i32") for n in names}
    source = triton.compiler.ASTSource(kernel, signature, {(names.index(n),): v for n, v in constants.items()})
    sizes[name] = len(triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["cubin"])
print(json.dumps(sizes))
"""


def compile_for_sm90(module: str, kernels: Mapping[str, tuple[Mapping[str, object], Mapping[str, str]]]) -> dict[str, int]:
    """Compile ``module``'s kernels, ``{name: (constexpr values, argument types)}`` (arguments not named in
    either are ``i32``), for sm_90; returns the cubin size of each. Fails with the compiler's error."""
    request = {"module": module, "kernels": {name: {"constants": c, "types": t} for name, (c, t) in kernels.items()}}
    environment = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(request)], env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])
