"""Where the run computes: ``--nnc-device cpu|cuda|cuda:N|auto``.

``parse_device`` checks the spelling only (no torch import, so the plugin stays light);
``resolve_device`` turns ``auto`` into ``cuda`` when a GPU is there and refuses a CUDA device the
machine does not have, with one line naming the value. ``cuda_deterministic`` sets what makes a
CUDA run repeatable. The CPU device adds nothing to any cache key (:func:`device_key_part`), so
CPU runs keep the keys and figures they always had.
"""

from __future__ import annotations

import os
import re

#: The device names the option accepts.
DEVICE_CHOICES = "cpu|cuda|cuda:N|auto"
_DEVICE = re.compile(r"cpu|auto|cuda(:\d{1,3})?")


class DeviceUnavailable(ValueError):
    """The requested device does not exist on this machine (the message names it and what there is)."""


def parse_device(value: str) -> str:
    """``value`` normalised (lower case, stripped) when it is one of cpu, cuda, cuda:N, auto; a ``ValueError``
    naming the value otherwise."""
    text = str(value).strip().lower()
    if not _DEVICE.fullmatch(text):
        raise ValueError(f"--nnc-device {value!r}: choose one of {DEVICE_CHOICES} (N: a GPU index, e.g. cuda:0)")
    return text


def resolve_device(value: str, *, cuda_available: bool | None = None, cuda_count: int | None = None) -> str:
    """The concrete device of ``value`` (``auto`` -> ``cuda`` when CUDA is available, else ``cpu``).

    A CUDA device that is not there raises :class:`DeviceUnavailable`. ``cuda_available``/``cuda_count`` default
    to what torch says (self-tests pass them to model a machine)."""
    name = parse_device(value)
    if name == "cpu":
        return name
    if cuda_available is None or cuda_count is None:
        import torch

        cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
        cuda_count = (torch.cuda.device_count() if cuda_available else 0) if cuda_count is None else cuda_count
    if name == "auto":
        return "cuda" if cuda_available else "cpu"
    if not cuda_available:
        raise DeviceUnavailable(f"--nnc-device {value!r}: CUDA is not available on this machine (torch sees no GPU); "
                                "use --nnc-device cpu or auto")
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= cuda_count:
        raise DeviceUnavailable(f"--nnc-device {value!r}: this machine has {cuda_count} CUDA device(s) "
                                f"(cuda:0 to cuda:{cuda_count - 1})")
    return name


def device_key_part(device: str | None, dtype: str = "float32") -> dict[str, str]:
    """What a cache key adds for the device: nothing on CPU in float32 (the keys every CPU run has always had),
    else the device type and dtype (a GPU's kernels give other floating-point results than the CPU's)."""
    if device in (None, "cpu") and dtype == "float32":
        return {}
    kind = "cpu" if device in (None, "cpu") else "cuda"
    return {"device": kind, "dtype": dtype}


def cuda_deterministic() -> None:
    """Settings that make CUDA kernels repeatable: cuBLAS's fixed workspace (must be set before cuBLAS starts,
    hence before any CUDA work), cuDNN's deterministic algorithms without benchmarking, no TF32."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def device_manifest(device: str | None) -> dict:
    """The device for the report: name, and on CUDA the GPU's name and the deterministic flags in force."""
    out: dict = {"device": device or "cpu"}
    if device and device.startswith("cuda"):
        import torch

        out.update(gpu=torch.cuda.get_device_name(torch.device(device)), cuda=torch.version.cuda,
                   cudnn_deterministic=torch.backends.cudnn.deterministic,
                   cublas_workspace_config=os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    return out
