"""The CUDA kernels, verified without a GPU: NVRTC compiles them, the CPU emulation of the same
source and launch equals NumPy, every cupy name the package uses exists; on a GPU, CuPy == NumPy.

The cases live in kernel_harness.py (shared by the three checks).
"""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kernel_harness import CASES, KernelCase

import minimask
from minimask import backend, kernels
from minimask.roi_align import roi_align

HERE = Path(__file__).resolve().parent
PACKAGE = Path(minimask.__file__).resolve().parent


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def kernel_case(request) -> KernelCase:
    return request.param


# ------------------------------------------------------------------------------------------------
# compile: NVRTC with the options CuPy's RawKernel would use (no driver needed), and nvcc -ptx
# ------------------------------------------------------------------------------------------------


def cupy_nvrtc_options(filename, dtype, arch):
    """The option list cupy.RawKernel hands to NVRTC: CuPy's include paths and --std (from
    cupy._core.core.assemble_cupy_compiler_options), -ftz=true (compiler._compile_with_cache_cuda),
    the architecture and --device-as-default-execution-space (compiler._compile_using_nvrtc)."""
    core = pytest.importorskip("cupy._core.core", reason="NVRTC check needs cupy (the 'dev' extra)")
    opts = core.assemble_cupy_compiler_options(kernels.nvrtc_options(filename, dtype))
    return list(opts) + ["-ftz=true", f"-arch={arch}", "--device-as-default-execution-space"]


@pytest.mark.parametrize("arch", ["compute_75", "sm_90"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("filename", kernels.KERNEL_FILES)
def test_nvrtc_compiles(filename, dtype, arch):
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="NVRTC check needs cupy")
    source = kernels.kernel_source(filename)
    prog = nvrtc.createProgram(source, filename, [], [])
    try:
        nvrtc.compileProgram(prog, cupy_nvrtc_options(filename, dtype, arch))
    except Exception as e:  # show the compiler's log, not just its error code
        pytest.fail(f"NVRTC failed on {filename} ({arch}, {np.dtype(dtype)}): {e}\n{nvrtc.getProgramLog(prog)}")
    if arch.startswith("compute"):
        ptx = nvrtc.getPTX(prog).decode()
        for name in kernels.kernel_signatures(source):
            assert f".entry {name}(" in ptx, f"kernel {name} missing from the PTX of {filename}"
    else:
        assert len(nvrtc.getCUBIN(prog)) > 0


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed (NVRTC check above still runs)")
@pytest.mark.parametrize("filename", kernels.KERNEL_FILES)
def test_nvcc_ptx(filename, tmp_path):
    src = Path(str(kernels.kernel_dir() / filename))
    opts = kernels.nvrtc_options(filename, np.float32)
    res = subprocess.run(["nvcc", "-ptx", "-arch=compute_75", *opts, str(src), "-o", str(tmp_path / "k.ptx")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_kernel_files_name_their_twin_and_use_grid_stride():
    for filename in kernels.KERNEL_FILES:
        source = kernels.kernel_source(filename)
        assert "NumPy twin: minimask/" in source.splitlines()[1], f"{filename}: line 2 names the NumPy twin"
        assert "gridDim" in source, f"{filename}: kernels use grid-stride loops"
        assert kernels.kernel_signatures(source), f"{filename}: no extern \"C\" __global__ kernel"


def test_kernels_ship_with_the_package():
    names = {p.name for p in kernels.kernel_dir().iterdir()}
    assert {*kernels.KERNEL_FILES, "cuda_cpu.h"} <= names


# ------------------------------------------------------------------------------------------------
# execute: the CPU emulation of the same source and launch equals the NumPy reference
# ------------------------------------------------------------------------------------------------

needs_gxx = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                               reason="the CPU emulation needs g++ (C++20)")


@needs_gxx
def test_emulation_matches_numpy(kernel_case):
    kernel_case.check(np)


@needs_gxx
def test_grid_smaller_than_work(monkeypatch):
    """Two blocks for thousands of elements: the grid-stride loops must cover the rest."""
    monkeypatch.setattr(kernels, "MAX_BLOCKS", 2)
    assert kernels.launch_config(10_000) == ((2,), (256,)) and kernels.nms_launch_config(200)[0] == (2, 2)
    for op in ("roi_align_forward", "roi_align_backward", "roi_pool_forward", "roi_pool_backward"):
        KernelCase(op, np.float32, K=30).check(np)
    KernelCase("nms", np.float32, K=200).check(np)         # grid (2, 2) for 4 x 4 blocks


SHIM_CHECK = r"""
extern "C" __global__ void rotate(const float* x, float* out, int n) {
  __shared__ float tile[128];
  // grid-stride over blocks: each block rotates its tile of blockDim.x values by one
  for (int base = blockIdx.x * blockDim.x; base < n; base += gridDim.x * blockDim.x) {
    tile[threadIdx.x] = x[base + threadIdx.x] * 2;
    __syncthreads();   // every thread of the block wrote its value
    out[base + threadIdx.x] = tile[(threadIdx.x + 1) % blockDim.x];
    __syncthreads();   // every thread read before the next round overwrites the tile
  }
}
"""


@needs_gxx
@pytest.mark.parametrize("grid", [1, 3, 8])
def test_shim_shared_memory_and_barrier(grid):
    """Thread t reads what thread t+1 wrote to __shared__ memory after __syncthreads: right only if
    the block's threads share `tile` and really wait for each other (a sequential emulation
    would read stale values or deadlock in the barrier)."""
    kern = kernels.CpuKernel("shim_check.cu", "rotate", np.float32, source=SHIM_CHECK)
    x = np.arange(8 * 128, dtype=np.float32)
    out = np.zeros_like(x)
    kern((grid,), (128,), (x, out, np.int32(x.size)))
    np.testing.assert_array_equal(out.reshape(8, 128), np.roll(2 * x.reshape(8, 128), -1, axis=1))


@needs_gxx
def test_cpu_kernel_checks_argument_types():
    kern = kernels.CpuKernel("roi_pool.cu", "roi_pool_backward", np.float32)
    with pytest.raises(TypeError, match="int32"):
        kern((1,), (32,), (np.zeros(4, np.float32), np.zeros(4, np.int64), np.zeros(5, np.float32),
                           np.zeros(4, np.float32), 4, 1, 2, 2, 1, 1))
    with pytest.raises(ValueError, match="arguments"):
        kern((1,), (32,), ())


@pytest.mark.slow
@needs_gxx
@pytest.mark.timeout(900)
def test_emulation_under_thread_sanitizer(tmp_path):
    """Every case again, compiled with -fsanitize=thread: no data race is reported."""
    cxx = os.environ.get("CXX", "g++")
    libtsan = subprocess.run([cxx, "-print-file-name=libtsan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(libtsan) or not os.path.exists(libtsan):
        pytest.skip(f"{cxx} has no ThreadSanitizer runtime (libtsan.so)")
    env = dict(os.environ, LD_PRELOAD=libtsan, TSAN_OPTIONS="halt_on_error=1 exitcode=66 report_signal_unsafe=0",
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(HERE / "kernel_harness.py"), "--tsan"], capture_output=True,
                         text=True, env=env, timeout=850)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    assert res.stdout.count("ok  ") == len(CASES)


# ------------------------------------------------------------------------------------------------
# audit: every cupy / cupyx attribute the package names exists in the installed cupy
# ------------------------------------------------------------------------------------------------

CUPY_NAMES = {"xp": "cupy", "cp": "cupy", "cupy": "cupy", "_cupy": "cupy", "cupyx": "cupyx", "_cupyx": "cupyx"}


def _package_files():
    """Every .py of the package, subpackages included (the stand-in device is NumPy, not an xp user)."""
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "fake_cuda.py"]


def _cupy_chain(node):
    """(root, 'a.b.c') when `node` is an attribute chain on a name bound to cupy/cupyx (xp, cp, ...) or on
    `get_array_module(...)`; else None."""
    chain, n = [], node
    while isinstance(n, ast.Attribute):
        chain.append(n.attr)
        n = n.value
    if not chain:
        return None
    if isinstance(n, ast.Name) and n.id in CUPY_NAMES:
        return CUPY_NAMES[n.id], ".".join(reversed(chain))
    if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "get_array_module":
        return "cupy", ".".join(reversed(chain))
    return None


def cupy_attribute_chains():
    """(file, root, 'a.b.c') for every attribute chain on cupy/cupyx in the package."""
    found = set()
    for path in _package_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and (c := _cupy_chain(node)) is not None:
                found.add((str(path.relative_to(PACKAGE)), *c))
    return sorted(found)


def cupy_calls():
    """(file:line, root, chain, keywords, positional count) for every call `xp.f(...)` in the package."""
    calls = []
    for path in _package_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and (c := _cupy_chain(node.func)) is not None:
                starred = any(isinstance(a, ast.Starred) for a in node.args)
                calls.append((f"{path.relative_to(PACKAGE)}:{node.lineno}", *c,
                              tuple(k.arg for k in node.keywords if k.arg is not None),
                              None if starred else len(node.args)))
    return calls


def test_audit_cupy_names():
    cupy = pytest.importorskip("cupy", reason="the audit needs cupy (the 'dev' extra)")
    cupyx = pytest.importorskip("cupyx", reason="the audit needs cupyx")
    roots = {"cupy": cupy, "cupyx": cupyx}
    chains = cupy_attribute_chains()
    assert any(c[2] == "RawKernel" for c in chains), "the audit should see kernels.py's cp.RawKernel"
    missing = []
    for file, root, chain in chains:
        obj = roots[root]
        for part in chain.split("."):
            if not hasattr(obj, part):
                missing.append(f"{file}: {root}.{chain}")
                break
            obj = getattr(obj, part)
    assert not missing, "names the installed cupy lacks:\n" + "\n".join(missing)


# keywords every CuPy ufunc call takes (ufuncs have no introspectable signature)
UFUNC_KEYWORDS = {"out", "dtype", "casting"}


def test_audit_every_cupy_call():
    """Every `xp.f(...)` call in the package: f exists in cupy, and cupy's f accepts its keywords and
    its number of positional arguments (NumPy-only keywords such as `kind="quicksort"` or
    `keepdims` where CuPy lacks it would fail on the first GPU, not here otherwise)."""
    import inspect

    cupy = pytest.importorskip("cupy", reason="the audit needs cupy (the 'dev' extra)")
    cupyx = pytest.importorskip("cupyx", reason="the audit needs cupyx")
    roots = {"cupy": cupy, "cupyx": cupyx}
    calls = cupy_calls()
    assert len(calls) > 100, "the audit should see the package's xp calls"
    problems, checked = [], 0
    for where, root, chain, keywords, npos in calls:
        obj = roots[root]
        for part in chain.split("."):
            obj = getattr(obj, part, None)
        if obj is None:
            problems.append(f"{where}: {root}.{chain} does not exist")
            continue
        if isinstance(obj, type) or inspect.ismodule(obj):
            continue                                    # dtypes (xp.float32(...)), RawKernel(...)
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):                 # ufuncs and compiled functions
            bad = set(keywords) - UFUNC_KEYWORDS if type(obj).__name__ == "ufunc" else set()
            if bad:
                problems.append(f"{where}: {root}.{chain} (a ufunc) does not take {sorted(bad)}")
            continue
        checked += 1
        params = sig.parameters.values()
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
            if set(keywords) - names:
                problems.append(f"{where}: {root}.{chain} does not take {sorted(set(keywords) - names)}")
        if npos is not None and not any(p.kind is p.VAR_POSITIONAL for p in params):
            most = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
            if npos > most:
                problems.append(f"{where}: {root}.{chain} takes at most {most} positional arguments, got {npos}")
    assert checked > 50
    assert not problems, "calls the installed cupy would refuse:\n" + "\n".join(problems)


# ------------------------------------------------------------------------------------------------
# on a real device (marked gpu; deselected by default, skipped without a device)
# ------------------------------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not backend.cupy_available(), reason="needs cupy and a CUDA device")


@pytest.mark.gpu
@needs_gpu
def test_gpu_matches_numpy(kernel_case):
    kernel_case.check(backend._import_cupy())


@pytest.mark.gpu
@needs_gpu
def test_gpu_public_ops_dispatch_to_kernels(rng):
    """minimask.roi_align on CuPy arrays runs the kernel (forward and backward through the tape)."""
    cp = backend._import_cupy()
    from minimask.tape import Tensor

    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    rois = np.array([[0, 1, 1, 20, 30], [1, 5, 5, 9, 9]], np.float32)
    t = Tensor(cp.asarray(x), requires_grad=True)
    out = roi_align(t, cp.asarray(rois), 7, 0.5, 2, True)
    assert backend.is_cupy_array(out.data)
    np.testing.assert_allclose(out.data.get(), roi_align(x, rois, 7, 0.5, 2, True).data, rtol=1e-5, atol=1e-5)
    out.backward(cp.ones(out.shape, cp.float32))
    assert backend.is_cupy_array(t.grad)
