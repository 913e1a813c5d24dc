"""What the machine is and what it can do: CPU/GPU description, memory, the GEMM peak, FLOPs of a
training step and of its convolutions alone (e), and whether bf16 runs on native kernels (f)."""

from __future__ import annotations

import math
import os
import platform
import resource
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from speed.timing import autocast, timed
from storyreason.models.autoencoder import ConvAutoencoder
from storyreason.modules.base import to_unit


def cpuinfo(field: str) -> str:
    """The first `field` of /proc/cpuinfo ('' where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == field), "")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (avx2, avx512_bf16, amx_bf16, ...)."""
    return set(cpuinfo("flags").split())


def machine(device: torch.device) -> dict:
    """What the figures were measured on."""
    info = {
        "cpu": cpuinfo("model name") or platform.processor(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cuda_peak(device: torch.device, phase: str) -> dict[str, float]:
    """{phase_cuda_max_allocated_mib: the most GPU memory allocated since the last call}; {} on a CPU."""
    if device.type != "cuda":
        return {}
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    torch.cuda.reset_peak_memory_stats(device)
    return {f"{phase}_cuda_max_allocated_mib": peak}


def gemm_peak(device: torch.device, precision: str, n: int | None = None, seconds: float = 1.0) -> float:
    """FLOP/s of the best n x n matmul in the run's precision (fp32, or bf16 for bf16-mixed)."""
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32
    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best, spent = math.inf, 0.0
    for i in range(11):  # the first call only warms up; then up to 10 timed, or `seconds`
        out: dict[str, float] = {}
        with timed(out, "s", device):
            torch.mm(a, b)
        best = min(best, out["s"]) if i else best
        spent += out["s"]
        if spent > seconds and i >= 3:
            break
    return 2 * n**3 / best


def train_flops_per_image(ae: ConvAutoencoder, batch: torch.Tensor, device: torch.device, precision: str) -> float:
    """FLOPs of one stage-1 training step (forward + backward) per image, counted by FlopCounterMode."""
    ae = ae.to(device)
    x = to_unit(batch.to(device), channels_last=True)
    with FlopCounterMode(display=False) as counter:
        with autocast(device, precision):
            recon = ae(x).float()
        (F.l1_loss(recon, x) + F.mse_loss(recon, x)).backward()
    ae.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x)


def conv_ceiling(ae: ConvAutoencoder, batch: torch.Tensor, device: torch.device, precision: str,
                 repeats: int = 5) -> tuple[float, float]:
    """(FLOPs, seconds) of the autoencoder's convolutions alone: each one's forward and backward timed
    in isolation (best of `repeats`) on the very input it sees in a training step, in channels-last and
    the run's precision. No pipeline built around these kernels can beat their FLOP/s, so divided by
    the GEMM peak it is the ceiling of `flop_utilization` on this machine."""
    ae = ae.to(device).train().to(memory_format=torch.channels_last)
    inputs: list[tuple[torch.nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: inputs.append((m, args[0].detach().clone())))
             for m in ae.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    x = to_unit(batch.to(device), channels_last=True)
    with torch.no_grad(), autocast(device, precision):
        ae(x)
    for hook in hooks:
        hook.remove()
    flops = seconds = 0.0
    for i, (conv, inp) in enumerate(inputs):
        inp = inp.requires_grad_(i > 0)  # the frames themselves need no gradient

        def step() -> None:
            with autocast(device, precision):
                out = conv(inp)
            out.backward(torch.ones_like(out))

        with FlopCounterMode(display=False) as counter:
            step()
        best = math.inf
        for _ in range(repeats):
            spent: dict[str, float] = {}
            with timed(spent, "s", device):
                step()
            best = min(best, spent["s"])
        flops, seconds = flops + counter.get_total_flops(), seconds + best
    ae.zero_grad(set_to_none=True)
    return flops, seconds


def bf16_support(device: torch.device) -> tuple[bool, str, float | None]:
    """Whether bf16 autocast runs on native kernels here: CUDA's own check; on a CPU, avx512_bf16 or
    amx_bf16 in /proc/cpuinfo and a small conv step that is faster in bf16 than in fp32.
    Returns (supported, reason, the probe's bf16/fp32 time ratio)."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, "CUDA reports bf16 support" if ok else "this GPU has no bf16", None
    native = sorted({"avx512_bf16", "amx_bf16"} & cpu_flags())
    ratio = bf16_probe()
    if not native:
        return False, (f"this CPU lacks avx512_bf16 and amx_bf16, so bf16 autocast runs emulated kernels "
                       f"(a small conv step took {ratio:.1f}x its fp32 time)"), ratio
    if ratio >= 1.0:
        return False, f"{', '.join(native)} present, but a small bf16 conv step took {ratio:.1f}x its fp32 time", ratio
    return True, f"{', '.join(native)} present; a small bf16 conv step took {ratio:.2f}x its fp32 time", ratio


def bf16_probe(batch: int = 4, steps: int = 2) -> float:
    """Time of a small autoencoder step in bf16 autocast over its fp32 time, on the CPU."""
    torch.manual_seed(0)
    ae = ConvAutoencoder().to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    seconds = {}
    for precision in ("32-true", "bf16-mixed"):
        best = math.inf
        for i in range(steps + 1):
            start = time.perf_counter()
            with autocast(torch.device("cpu"), precision):
                recon = ae(x).float()
            F.l1_loss(recon, x).backward()
            best = min(best, time.perf_counter() - start) if i else best
        seconds[precision] = best
    return seconds["bf16-mixed"] / seconds["32-true"]
