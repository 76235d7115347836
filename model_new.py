"""ConvTranspose3d on our own CUDA kernels: a drop-in for ``torch.nn.ConvTranspose3d``.

Public pieces:
  * ``conv_transpose3d(x, weight, bias, stride, padding, output_padding, groups, dilation)``:
    the functional, same arguments as ``torch.nn.functional.conv_transpose3d``.
  * ``ConvTranspose3d``: the module (constructor, parameters, ``reset_parameters``,
    ``extra_repr`` and ``state_dict`` of ``nn.ConvTranspose3d``).
  * ``ModelNew``: the KernelBench-style model, same constructor and forward as
    ``reference.Model``.

Forward, grad input, grad weight and grad bias all run on the kernels in ``kernels/``
(compiled with ``load_inline`` at import when a CUDA device is present). The ops are
registered with ``torch.library`` (fake implementations and autograd included), so
``torch.compile`` traces through them without a graph break.

Precision follows PyTorch's cuDNN convolution setting for fp32 tensors: with TF32 allowed
(PyTorch's default) both operands are rounded to TF32 (nearest-even) and accumulated in
fp32, as cuDNN does; with TF32 disallowed the result is fp32-accurate. fp16/bf16
accumulate in fp32 and round the output once; fp64 is exact.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch._prims_common
import torch.nn as nn
from torch import Tensor
from torch.nn import init
from torch.nn.parameter import Parameter

__all__ = ["conv_transpose3d", "ConvTranspose3d", "ModelNew", "load_extension"]

IntOr3 = Union[int, Sequence[int]]

# ----------------------------------------------------------------------------------------
# Building the CUDA extension
# ----------------------------------------------------------------------------------------
OP_NAMESPACE = "ct3d"   # torch.library namespace of our ops (bundles use their own)
EXTENSION_NAME = "ct3d_ext"

# >>> kernel sources (bundle.py replaces this block with the sources inlined as strings)
KERNEL_DIR = Path(__file__).resolve().parent / "kernels"
# Order matters: the shared header first, then one file per job, then the host API.
CUDA_FILES = ("common.cuh", "window_tc.cuh", "window_wg.cuh", "unit_tap.cuh", "forward.cu", "grad_input.cu", "grad_weight.cu",
              "direct.cu", "api.cu")
CPP_FILES = ("bindings.cpp",)
_LOCAL_INCLUDE = re.compile(r'^#include "(\w+\.cuh)"$', re.MULTILINE)

def kernel_sources() -> tuple[str, str]:
    """(C++ source, CUDA source): the files of ``kernels/`` joined in CUDA_FILES order, so
    each local header is inlined once, ahead of its users."""
    cuda = "\n".join(
        _LOCAL_INCLUDE.sub(r"// (\1 inlined above)", (KERNEL_DIR / f).read_text())
        .replace("#pragma once", "")
        for f in CUDA_FILES
    )
    cpp = "\n".join((KERNEL_DIR / f).read_text() for f in CPP_FILES)
    return cpp, cuda


PREBUILT_META = "prebuilt.json"


def build_key(flags: Sequence[str]) -> str:
    """What the extension's machine code depends on, besides its GPU target: the sources, the
    nvcc flags that change code, and the torch and Python versions it is built against."""
    import hashlib
    import sys

    same_code = ("-gencode", "-Xptxas=-v", "-Xptxas=--split-compile")  # target; report; speed
    h = hashlib.sha256()
    for part in (*kernel_sources(), " ".join(f for f in flags if not f.startswith(same_code)),
                 torch.__version__, "%d.%d" % sys.version_info[:2]):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def prebuilt_extension(flags: Sequence[str]):
    """A copy of the extension built elsewhere for this exact source (development only:
    device machines start bare, and scripts/prebuild.sh builds the extension on a machine
    without a GPU for the device's torch and Python). CT3D_PREBUILT names its folder. Returns
    the module, or None (with a warning: then the extension is built as usual) where the copy
    is for other sources, flags, versions or GPUs, or does not load."""
    folder = os.environ.get("CT3D_PREBUILT")
    if not folder:
        return None
    import importlib.util
    import json
    import warnings

    meta_file = Path(folder) / PREBUILT_META
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else None
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    if meta is None:
        why = f"there is no {PREBUILT_META} there"
    elif meta["key"] != build_key(flags):
        why = "it was built from other sources, flags, torch or Python"
    elif caps != [tuple(meta["capability"])]:
        why = f"it was built for compute capability {tuple(meta['capability'])}, the GPUs are {caps}"
    else:
        try:
            spec = importlib.util.spec_from_file_location(EXTENSION_NAME, Path(folder) / meta["file"])
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        except (ImportError, OSError) as e:
            why = f"it does not load ({e})"
    warnings.warn(f"CT3D_PREBUILT={folder} not used: {why}. Building the extension.")
    return None
# <<< kernel sources


_ALGOS = {"auto": 0, "tiled": 1, "direct": 2, "tc": 3, "tc_mma": 4, "tc_wgmma": 5}
_AUTOCAST_CASTS = (torch.float32, torch.float16, torch.bfloat16)
_ext = None


def _arch_flags() -> list[str]:
    """nvcc targets when an sm_90 GPU is visible and TORCH_CUDA_ARCH_LIST is unset: every
    visible GPU's own, with sm_90a (arch-specific, it has wgmma) in place of sm_90, and PTX
    of the newest. Else torch's default (then the wgmma kernels are built only where the
    list names 9.0a; the ops fall back to mma.sync elsewhere)."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST") or not torch.cuda.is_available():
        return []
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    if (9, 0) not in caps:
        return []
    flags = []
    for major, minor in caps:
        a = f"{major}{minor}" + ("a" if (major, minor) == (9, 0) else "")
        flags.append(f"-gencode=arch=compute_{a},code=sm_{a}")
    major, minor = caps[-1]
    flags.append(f"-gencode=arch=compute_{major}{minor},code=compute_{major}{minor}")
    return flags


def _ptxas_flags() -> list[str]:
    """``--split-compile=0`` for ptxas where the toolkit's ptxas takes it: ptxas then compiles
    the kernels on every CPU at once. Same machine code (cuobjdump -sass of the whole
    extension is byte-identical), half the ptxas time on 2 cores (NOTES.md, "Build time").
    Not nvcc's own --split-compile, which splits cicc's optimizer and changes the code."""
    from torch.utils.cpp_extension import CUDA_HOME

    ptxas = os.path.join(CUDA_HOME or "", "bin", "ptxas")
    if not os.access(ptxas, os.X_OK):
        return []
    usage = subprocess.run([ptxas, "--help"], capture_output=True, text=True).stdout
    return ["-Xptxas=--split-compile=0"] if "--split-compile" in usage else []


def cuda_flags() -> list[str]:
    """nvcc's flags for the extension (the C++ standard is torch's)."""
    flags = ["-O3", "-lineinfo"] + _arch_flags() + _ptxas_flags()
    if os.environ.get("CT3D_PTXAS_VERBOSE"):
        flags.append("-Xptxas=-v")
    if os.environ.get("CT3D_WG_TIMING"):  # debug: phase clocks of the wgmma window kernel
        flags.append("-DCT3D_WG_TIMING")
    return flags


def load_extension(verbose: bool = False, extra_include_paths: Sequence[str] = ()):
    """Compile (or load from torch's extension cache) and return the CUDA extension.

    ``extra_include_paths``: for machines whose CUDA toolkit lacks headers that ATen includes
    (CI passes the headers shipped in torch's NVIDIA wheels)."""
    global _ext
    if _ext is None:
        from torch.utils.cpp_extension import load_inline

        flags = cuda_flags()
        _ext = prebuilt_extension(flags)
        if _ext is not None:
            return _ext
        cpp, cuda = kernel_sources()
        _ext = load_inline(
            name=EXTENSION_NAME,
            cpp_sources=[cpp],
            cuda_sources=[cuda],
            extra_cuda_cflags=flags,
            extra_cflags=["-O2"],
            extra_include_paths=list(extra_include_paths),
            verbose=verbose or bool(os.environ.get("CT3D_VERBOSE_BUILD")),
        )
    return _ext


if torch.cuda.is_available():
    # Whether each GPU runs the wgmma kernels is probed once, here, outside any CUDA graph
    # capture (the probe synchronizes).
    for _dev in range(torch.cuda.device_count()):
        load_extension().wgmma_available(_dev)


# ----------------------------------------------------------------------------------------
# Arguments: normalization and checks (messages follow PyTorch's)
# ----------------------------------------------------------------------------------------
def _triple(v: IntOr3, name: str) -> list[int]:
    if type(v) is tuple and len(v) == 3 and type(v[0]) is int and type(v[1]) is int and type(v[2]) is int:
        return list(v)  # the module's own (normalized) arguments: the common case, kept cheap
    if isinstance(v, int):
        return [v, v, v]
    v = list(v)
    if len(v) == 1:
        return v * 3
    if len(v) != 3:
        raise RuntimeError(
            f"expected {name} to be a single integer value or a list of 3 values to match the "
            f"convolution dimensions, but got {name}={v}"
        )
    return [int(e) for e in v]


# PyTorch's fp32 precision settings for cuDNN convolutions, most specific first, as the
# (backend, op) names of its getter: torch.backends.cudnn.conv, torch.backends.cudnn,
# torch.backends. Read through the getter itself: the properties cost ~9 us a call together,
# the getter 0.3 us a level (a forward + backward reads them three times). Used only where
# this torch's properties read the same values through it (checked once here).
_FP32_GETTER = getattr(torch._C, "_get_fp32_precision_getter", None)
_FP32_LEVELS = (("cuda", "conv"), ("cuda", "all"), ("generic", "all"))


def _fp32_properties() -> list:
    b = torch.backends
    return [b.cudnn.conv.fp32_precision, b.cudnn.fp32_precision, b.fp32_precision]


def _has_fp32_precision() -> bool:
    backends = torch.backends
    return hasattr(backends.cudnn, "conv") and hasattr(backends.cudnn.conv, "fp32_precision")


_HAS_FP32_PRECISION = _has_fp32_precision()  # this torch has the fine-grained settings
_FP32_FAST = (_HAS_FP32_PRECISION and _FP32_GETTER is not None
              and [_FP32_GETTER(*lv) for lv in _FP32_LEVELS] == _fp32_properties())


def tf32_allowed() -> bool:
    """PyTorch's setting for fp32 cuDNN convolutions: True when TF32 may be used.

    Reads the fine-grained setting (``torch.backends.cudnn.conv.fp32_precision``, then
    its parents) where this torch has it, else the legacy ``allow_tf32`` flag.
    """
    if _FP32_FAST:
        for lv in _FP32_LEVELS:
            prec = _FP32_GETTER(*lv)
            if prec != "none":
                return prec == "tf32"
        return False
    if _HAS_FP32_PRECISION:
        for prec in _fp32_properties():
            if prec != "none":
                return prec == "tf32"
        return False
    return bool(torch._C._get_cudnn_allow_tf32())


def forward_tf32(groups: int, stride, output_padding) -> bool:
    """Whether the fp32 forward runs in TF32: where PyTorch's own forward would.

    With TF32 allowed, PyTorch's ConvTranspose3d is not TF32 everywhere. Where
    output_padding >= stride in some dimension it leaves cuDNN for its own kernel (im2col
    and a cuBLAS GEMM, TF32 only if matmul TF32 is allowed); and cuDNN's heuristics pick an
    exact fp32 engine for grouped convolutions (every grouped strided shape we probed, 2/3
    of grouped stride-1 ones; NOTES.md, v7). Elsewhere (groups = 1) cuDNN picks TF32 on most
    shapes of realistic size (cuDNN's choice on tiny ones is not predictable from the shape).
    Matching the choice keeps a harness's allclose(1e-4) against the reference true; where
    we compute exactly the contract allows it (more precise than TF32)."""
    if not tf32_allowed():
        return False
    if any(op >= s for op, s in zip(output_padding, stride)):
        return bool(torch.backends.cuda.matmul.allow_tf32)
    return groups == 1


def output_size(in_size: Sequence[int], kernel: Sequence[int], stride, padding,
                output_padding, dilation) -> list[int]:
    """Spatial output size of a transposed convolution (one entry per dimension)."""
    return [
        (i - 1) * s - 2 * p + d * (k - 1) + op + 1
        for i, k, s, p, op, d in zip(in_size, kernel, stride, padding, output_padding, dilation)
    ]


def _check(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding,
           output_padding, dilation, groups: int) -> None:
    """Raise what PyTorch raises for bad arguments, before any kernel is launched."""
    if x.dim() != 5:
        raise RuntimeError(
            "Expected 4D (unbatched) or 5D (batched) input to conv_transpose3d, but got input "
            f"of size: {list(x.shape)}")
    if weight.dim() != 5:
        raise RuntimeError(
            f"Expected 5-dimensional weight for conv_transpose3d, but got {weight.dim()}-dimensional "
            f"weight of size {list(weight.shape)}")
    for other, what in ((weight, "weight"), (bias, "bias")):
        if other is not None and (other.dtype != x.dtype or other.device != x.device):
            raise RuntimeError(
                f"Input type ({x.type()}) and {what} type ({other.type()}) should be the same"
                + ("" if x.device == other.device else
                   f" (input is on {x.device}, {what} on {other.device})"))
    if not x.dtype.is_floating_point or x.dtype not in (torch.float16, torch.bfloat16,
                                                         torch.float32, torch.float64):
        raise RuntimeError(
            f"conv_transpose3d: our kernels take float16, bfloat16, float32 and float64 tensors, "
            f"got {x.dtype}")
    if any(s <= 0 for s in stride):
        raise RuntimeError("non-positive stride is not supported")
    if any(p < 0 for p in padding):
        raise RuntimeError("negative padding is not supported")
    if any(op < 0 for op in output_padding):
        raise RuntimeError("negative output_padding is not supported")
    if any(d <= 0 for d in dilation):
        raise RuntimeError("dilation should be greater than zero")
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    if weight.shape[0] < groups:
        raise RuntimeError(
            f"Given groups={groups}, expected weight to be at least {groups} at dimension 0, "
            f"but got weight of size {list(weight.shape)} instead")
    if weight.shape[0] % groups != 0:
        raise RuntimeError(
            f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
            f"but got weight of size [{list(weight.shape)}] instead")
    if x.shape[1] != weight.shape[0]:
        raise RuntimeError(
            f"Given transposed=1, weight of size {list(weight.shape)}, expected input"
            f"{list(x.shape)} to have {weight.shape[0]} channels, but got {x.shape[1]} channels "
            "instead")
    cout = weight.shape[1] * groups
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != cout):
        raise RuntimeError(
            f"Given transposed=1, weight of size {list(weight.shape)}, expected bias to be "
            f"1-dimensional with {cout} elements, but got bias of size {list(bias.shape)} instead")
    if any(op >= s and op >= d for op, s, d in zip(output_padding, stride, dilation)):
        raise RuntimeError(
            "output padding must be smaller than either stride or dilation, but got "
            "output_padding_depth: {} output_padding_height: {} output_padding_width: {} "
            "stride_depth: {} stride_height: {} stride_width: {} dilation_depth: {} "
            "dilation_height: {} dilation_width: {}".format(*output_padding, *stride, *dilation))
    if any(e == 0 for e in x.shape[2:]):
        raise RuntimeError(
            f"Only zero batch or zero channel inputs are supported, but got input shape: {list(x.shape)}")
    out = output_size(x.shape[2:], weight.shape[2:], stride, padding, output_padding, dilation)
    if any(o <= 0 for o in out):
        raise RuntimeError(
            "Given input size per channel: ({}). Calculated output size per channel: ({}). "
            "Output size is too small".format(" x ".join(map(str, x.shape[2:])),
                                               " x ".join(map(str, out))))
    if x.device.type not in ("cuda", "meta"):
        raise RuntimeError(
            f"conv_transpose3d: our kernels run on CUDA tensors only, but the input is on "
            f"{x.device}. Move the module and its input to a CUDA device (.cuda()).")


# Argument signatures that _check has passed: what it reads, and nothing else. A layer
# called again with the same shapes skips the ~15 us of Python checks (its result cannot
# differ). Bounded: cleared when full.
_CHECKED: set = set()


def _check_once(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding,
                output_padding, dilation, groups: int) -> None:
    key = (x.shape, x.dtype, x.device, weight.shape, weight.dtype, weight.device,
           None if bias is None else (bias.shape, bias.dtype, bias.device),
           tuple(stride), tuple(padding), tuple(output_padding), tuple(dilation), groups)
    if key in _CHECKED:
        return
    _check(x, weight, bias, stride, padding, output_padding, dilation, groups)
    if len(_CHECKED) >= 4096:
        _CHECKED.clear()
    _CHECKED.add(key)


def suggest_format(act: Tensor, weight: Tensor, stride, output_padding) -> torch.memory_format:
    """Memory format of the activation PyTorch makes from ``act`` and ``weight`` (ATen's
    cudnn_conv_suggest_memory_format), which ours makes too: channels_last_3d if either is
    laid out so, except in fp64 and where output_padding >= stride (PyTorch then runs its
    own kernel, which writes contiguous tensors). api.cu's suggest_format is the same rule."""
    if act.dtype == torch.float64 or any(op >= s for op, s in zip(output_padding, stride)):
        return torch.contiguous_format
    suggest = torch._prims_common.suggest_memory_format
    if torch.channels_last_3d in (suggest(act), suggest(weight)):
        return torch.channels_last_3d
    return torch.contiguous_format


# ----------------------------------------------------------------------------------------
# Custom ops: forward, grad input, grad weight + bias (fake implementations, autograd)
# Each reads PyTorch's TF32 setting when it runs (as PyTorch's own convolution does), so the
# setting in force at backward time governs the backward, also under torch.compile.
# ----------------------------------------------------------------------------------------
def _extension():
    if _ext is None:
        raise RuntimeError(
            "conv_transpose3d: the CUDA extension is not loaded (no CUDA device at import). "
            "Call model_new.load_extension() on a machine with a CUDA device.")
    return _ext


# The three extension calls and the backward rule, shared by the custom ops (below) and the
# eager path (_ConvTranspose3dFn): both run exactly these.
def _forward_ext(x, weight, bias, stride, padding, output_padding, dilation, groups, algo):
    return _extension().forward(x, weight, bias, stride, padding, output_padding, dilation,
                                groups, forward_tf32(groups, stride, output_padding), algo)


def _grad_input_ext(grad_out, weight, input_size, stride, padding, output_padding, dilation,
                    groups, algo):
    return _extension().grad_input(grad_out, weight, input_size, stride, padding, output_padding,
                                   dilation, groups, tf32_allowed(), algo)


def _grad_weight_bias_ext(grad_out, x, weight_size, stride, padding, output_padding, dilation,
                          groups, need_weight, need_bias, algo):
    dw, db = _extension().grad_weight_bias(grad_out, x, weight_size, stride, padding,
                                           output_padding, dilation, groups, need_weight,
                                           need_bias, tf32_allowed(), algo)
    return dw, db


def _save_for_backward(ctx, x, weight, bias, stride, padding, output_padding, dilation, groups,
                       algo):
    ctx.save_for_backward(x, weight)
    ctx.args = (stride, padding, output_padding, dilation, groups)
    ctx.algo = algo
    ctx.has_bias = bias is not None


def _backward_with(ctx, grad_out, grad_input, grad_weight_bias):
    """Only the gradients autograd asks for; grad bias comes from the grad-weight pass."""
    x, weight = ctx.saved_tensors
    stride, padding, output_padding, dilation, groups = ctx.args
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    need_b = need_b and ctx.has_bias
    dx = dw = db = None
    if need_x:
        dx = grad_input(grad_out, weight, list(x.shape), stride, padding, output_padding,
                        dilation, groups, ctx.algo)
    if need_w or need_b:
        gw, gb = grad_weight_bias(grad_out, x, list(weight.shape), stride, padding,
                                  output_padding, dilation, groups, need_w, need_b, ctx.algo)
        dw = gw if need_w else None
        db = gb if need_b else None
    return dx, dw, db, None, None, None, None, None, None


if hasattr(getattr(torch.ops, OP_NAMESPACE), "conv_transpose3d"):
    # Already registered in this process (this file executed again, as harnesses do):
    # reuse the registered ops, their fake implementations and autograd.
    _ns = getattr(torch.ops, OP_NAMESPACE)
    _conv_transpose3d_op = _ns.conv_transpose3d
    _grad_input_op = _ns.conv_transpose3d_grad_input
    _grad_weight_bias_op = _ns.conv_transpose3d_grad_weight_bias
else:
    @torch.library.custom_op(f"{OP_NAMESPACE}::conv_transpose3d", mutates_args=())
    def _conv_transpose3d_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: list[int],
                             padding: list[int], output_padding: list[int], dilation: list[int],
                             groups: int, algo: int) -> Tensor:
        return _forward_ext(x, weight, bias, stride, padding, output_padding, dilation, groups, algo)


    @_conv_transpose3d_op.register_fake
    def _(x, weight, bias, stride, padding, output_padding, dilation, groups, algo):
        out = output_size(x.shape[2:], weight.shape[2:], stride, padding, output_padding, dilation)
        return torch.empty((x.shape[0], weight.shape[1] * groups, *out), dtype=x.dtype,
                           device=x.device, memory_format=suggest_format(x, weight, stride, output_padding))


    @torch.library.custom_op(f"{OP_NAMESPACE}::conv_transpose3d_grad_input", mutates_args=())
    def _grad_input_op(grad_out: Tensor, weight: Tensor, input_size: list[int], stride: list[int],
                       padding: list[int], output_padding: list[int], dilation: list[int],
                       groups: int, algo: int) -> Tensor:
        return _grad_input_ext(grad_out, weight, input_size, stride, padding, output_padding,
                               dilation, groups, algo)


    @_grad_input_op.register_fake
    def _(grad_out, weight, input_size, stride, padding, output_padding, dilation, groups, algo):
        return torch.empty(input_size, dtype=grad_out.dtype, device=grad_out.device,
                           memory_format=suggest_format(grad_out, weight, stride, output_padding))


    @torch.library.custom_op(f"{OP_NAMESPACE}::conv_transpose3d_grad_weight_bias", mutates_args=())
    def _grad_weight_bias_op(grad_out: Tensor, x: Tensor, weight_size: list[int], stride: list[int],
                             padding: list[int], output_padding: list[int], dilation: list[int],
                             groups: int, need_weight: bool, need_bias: bool,
                             algo: int) -> tuple[Tensor, Tensor]:
        return _grad_weight_bias_ext(grad_out, x, weight_size, stride, padding, output_padding,
                                     dilation, groups, need_weight, need_bias, algo)


    @_grad_weight_bias_op.register_fake
    def _(grad_out, x, weight_size, stride, padding, output_padding, dilation, groups, need_weight,
          need_bias, algo):
        dw = grad_out.new_empty(weight_size if need_weight else (0,))
        db = grad_out.new_empty((grad_out.shape[1],) if need_bias else (0,))
        return dw, db


    def _setup_context(ctx, inputs, output):
        _save_for_backward(ctx, *inputs)


    def _backward(ctx, grad_out):
        return _backward_with(ctx, grad_out, _grad_input_op, _grad_weight_bias_op)


    _conv_transpose3d_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------
# Eager path: the same extension calls through a torch.autograd.Function
# ----------------------------------------------------------------------------------------
# A custom op's dispatch costs about 100 us of CPU a call (measured: 111 us with autograd
# against 12 for an autograd.Function), more than our kernels take on small layers (kb72's
# forward kernel: 120 us; the harness's small references ran at 0.5-0.6x cuDNN for it). In
# plain eager mode on CUDA tensors conv_transpose3d calls the extension through this
# Function; under torch.compile, a dispatch mode (fake tensors, FlopCounter, ...), on meta
# tensors, tensor subclasses or functorch transforms it calls the custom ops, which those need.
def _eager_ok(*tensors) -> bool:
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return False
    return all(t is None or (type(t) in (torch.Tensor, nn.Parameter) and t.is_cuda and
                             not torch._C._functorch.is_functorch_wrapped_tensor(t))
               for t in tensors)


class _ConvTranspose3dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding, dilation, groups, algo):
        _save_for_backward(ctx, x, weight, bias, stride, padding, output_padding, dilation,
                           groups, algo)
        return _forward_ext(x, weight, bias, stride, padding, output_padding, dilation, groups, algo)

    @staticmethod
    @torch.autograd.function.once_differentiable  # as the custom ops: no double backward
    def backward(ctx, grad_out):
        return _backward_with(ctx, grad_out, _grad_input_ext, _grad_weight_bias_ext)


# ----------------------------------------------------------------------------------------
# Functional
# ----------------------------------------------------------------------------------------
def conv_transpose3d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntOr3 = 1,
                     padding: IntOr3 = 0, output_padding: IntOr3 = 0, groups: int = 1,
                     dilation: IntOr3 = 1, *, algo: str = "auto") -> Tensor:
    """Same arguments and result as ``torch.nn.functional.conv_transpose3d``, on our kernels.

    ``algo``: "auto" (tensor-core forward and grad input where they fit, else the FFMA
    tiled kernels; fp64 on the exact direct kernels), "tc" (tensor cores, an error where
    they do not fit), "tiled" (the FFMA tiled kernels), or "direct" (the simple exact
    kernels, for every dtype). "tc_mma" and "tc_wgmma" are "tc" with the forward and grad
    input on mma.sync only, or on Hopper's wgmma wherever it can run (for tests).
    """
    stride, padding = _triple(stride, "stride"), _triple(padding, "padding")
    output_padding, dilation = _triple(output_padding, "output_padding"), _triple(dilation, "dilation")
    if algo not in _ALGOS:
        raise ValueError(f"algo must be one of {sorted(_ALGOS)}, got {algo!r}")
    if x.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        # As autocast does for PyTorch's convolution: run in the autocast dtype; fp64 stays.
        low = torch.get_autocast_dtype("cuda")
        x, weight, bias = (t.to(low) if t is not None and t.dtype in _AUTOCAST_CASTS else t
                           for t in (x, weight, bias))
    unbatched = x.dim() == 4
    if unbatched:
        x = x.unsqueeze(0)
    _check_once(x, weight, bias, stride, padding, output_padding, dilation, groups)
    op = _ConvTranspose3dFn.apply if _eager_ok(x, weight, bias) else _conv_transpose3d_op
    y = op(x, weight, bias, stride, padding, output_padding, dilation, groups, _ALGOS[algo])
    return y.squeeze(0) if unbatched else y


# ----------------------------------------------------------------------------------------
# Module (mirrors torch/nn/modules/conv.py: _ConvNd + ConvTranspose3d)
# ----------------------------------------------------------------------------------------
class ConvTranspose3d(nn.Module):
    """Drop-in ``nn.ConvTranspose3d``: same constructor, parameters, initialization and
    ``state_dict``; forward and backward on our CUDA kernels."""

    __constants__ = ["stride", "padding", "dilation", "groups", "padding_mode", "output_padding",
                     "in_channels", "out_channels", "kernel_size"]

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOr3,
                 stride: IntOr3 = 1, padding: IntOr3 = 0, output_padding: IntOr3 = 0,
                 groups: int = 1, bias: bool = True, dilation: IntOr3 = 1,
                 padding_mode: str = "zeros", device=None, dtype=None) -> None:
        super().__init__()
        if padding_mode != "zeros":
            raise ValueError(f'Only "zeros" padding mode is supported for {self.__class__.__name__}')
        if isinstance(padding, str):
            raise ValueError(f"padding={padding!r} is not supported for {self.__class__.__name__}")
        if groups <= 0:
            raise ValueError("groups must be a positive integer")
        if in_channels % groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        factory_kwargs = {"device": device, "dtype": dtype}
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = tuple(_triple(kernel_size, "kernel_size"))
        self.stride = tuple(_triple(stride, "stride"))
        self.padding = tuple(_triple(padding, "padding"))
        self.dilation = tuple(_triple(dilation, "dilation"))
        self.transposed = True
        self.output_padding = tuple(_triple(output_padding, "output_padding"))
        self.groups = groups
        self.padding_mode = padding_mode
        self.algo = "auto"  # a key of _ALGOS (see conv_transpose3d): which kernel family runs
        self.weight = Parameter(torch.empty(
            (in_channels, out_channels // groups, *self.kernel_size), **factory_kwargs))
        if bias:
            self.bias = Parameter(torch.empty(out_channels, **factory_kwargs))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Consumes the RNG exactly as nn.ConvTranspose3d does (same calls, same order),
        # so the same seed gives bit-identical parameters.
        with torch.no_grad():
            if not self.weight.is_contiguous():
                tmp = torch.empty_like(self.weight, memory_format=torch.contiguous_format)
                init.kaiming_uniform_(tmp, a=math.sqrt(5))
                self.weight.copy_(tmp)
            else:
                init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            if self.bias is not None:
                fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        s = "{in_channels}, {out_channels}, kernel_size={kernel_size}, stride={stride}"
        if self.padding != (0,) * 3:
            s += ", padding={padding}"
        if self.dilation != (1,) * 3:
            s += ", dilation={dilation}"
        if self.output_padding != (0,) * 3:
            s += ", output_padding={output_padding}"
        if self.groups != 1:
            s += ", groups={groups}"
        if self.bias is None:
            s += ", bias=False"
        return s.format(**self.__dict__)

    def _output_padding(self, x: Tensor, output_size: Optional[Sequence[int]]) -> list[int]:
        """``output_padding`` to use, derived from ``output_size`` when given (as nn does)."""
        if output_size is None:
            return list(self.output_padding)
        batched = x.dim() == 5
        output_size = list(output_size)
        if len(output_size) == (2 if batched else 1) + 3:
            output_size = output_size[(2 if batched else 1):]
        if len(output_size) != 3:
            raise ValueError(
                f"ConvTranspose3D: for {x.dim()}D input, output_size must have 3 or "
                f"{(2 if batched else 1) + 3} elements (got {len(output_size)})")
        spatial = x.shape[-3:]
        mins = [(spatial[e] - 1) * self.stride[e] - 2 * self.padding[e]
                + self.dilation[e] * (self.kernel_size[e] - 1) + 1 for e in range(3)]
        maxs = [mins[e] + self.stride[e] - 1 for e in range(3)]
        for e in range(3):
            if not mins[e] <= output_size[e] <= maxs[e]:
                raise ValueError(
                    f"requested an output size of {output_size}, but valid sizes range from "
                    f"{mins} to {maxs} (for an input of {spatial})")
        return [output_size[e] - mins[e] for e in range(3)]

    def forward(self, input: Tensor, output_size: Optional[Sequence[int]] = None) -> Tensor:
        return conv_transpose3d(input, self.weight, self.bias, self.stride, self.padding,
                                self._output_padding(input, output_size), self.groups,
                                self.dilation, algo=self.algo)


# ----------------------------------------------------------------------------------------
# KernelBench model
# ----------------------------------------------------------------------------------------
class ModelNew(nn.Module):
    """Same constructor and forward as ``reference.Model``; every spatial argument also takes
    an int, and a trailing ``dilation`` is accepted as ``nn.ConvTranspose3d`` does."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOr3,
                 stride: IntOr3 = (1, 1, 1), padding: IntOr3 = (0, 0, 0),
                 output_padding: IntOr3 = (0, 0, 0), groups: int = 1, bias: bool = False,
                 dilation: IntOr3 = 1) -> None:
        super().__init__()
        self.conv_transpose3d = ConvTranspose3d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            output_padding=output_padding, groups=groups, bias=bias, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_transpose3d(x)
