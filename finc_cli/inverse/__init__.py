"""The swappable seam for the FInC inverse: backend registry, selection and `solve`.

Problem solved by every backend (docs/finc_unit.md, docs/inverse.md). With C = 4·C' channels in 4 groups g of C'
channels each, an effective kernel `weight` (4, C', C', k, k) given in top-left (TL)
orientation whose centre tap weight[g, :, :, k-1, k-1] is unit lower triangular, the forward
FInC unit computes, for every group g, output channel o and pixel (i, j):

    y[b, g·C'+o, i, j] = Σ_{c, a, e} weight[g, o, c, a, e] · x[b, g·C'+c, i + sh·(a-k+1), j + sw·(e-k+1)]

with x = 0 outside the image, sh = +1 for g ∈ {0, 1} (top padding), -1 for g ∈ {2, 3} (bottom),
and sw = +1 for g ∈ {0, 2} (left padding), -1 for g ∈ {1, 3} (right). Group order: TL, TR, BL, BR.

A backend is `fn(y, weight, linv) -> x` with y (B, C, H, W) contiguous, weight as above and
linv (4, C', C') = inverse of the centre taps, all of one dtype and device. Backends are not
differentiable (the inverse is used for sampling and reconstruction).

Selection: explicit argument > `use_backend(...)` context > $FINC_INVERSE_BACKEND > auto
(cupy for CUDA tensors when CuPy works, else native on the CPU when a C compiler works,
else wavefront). Naming cupy where CuPy does not import is an InverseBackendError that says
what to install; auto falls back silently.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from typing import Callable, Iterator, Optional, Union

import torch

from finc_cli.errors import InverseBackendError

__all__ = [
    "ENV_VAR",
    "InverseBackendError",
    "centre_inverse",
    "get_backend",
    "is_available",
    "register_backend",
    "select_backend",
    "solve",
    "use_backend",
]

ENV_VAR = "FINC_INVERSE_BACKEND"

# name -> (module, function); modules are imported on first use so optional ones stay optional.
_REGISTRY: dict[str, tuple[str, str]] = {
    "reference": ("finc_cli.inverse.reference", "reference_inverse"),
    "wavefront": ("finc_cli.inverse.wavefront", "wavefront_inverse"),
    "native": ("finc_cli.inverse.native", "native_inverse"),
    "cupy": ("finc_cli.inverse.cupy_backend", "cupy_inverse"),
}

_local = threading.local()


def register_backend(name: str, module: str, function: str) -> None:
    """Add a backend (used by benchmarks for schedules that are not solvers of record)."""
    _REGISTRY[name] = (module, function)


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Force a backend inside a `with` block (explicit arguments still win)."""
    previous = getattr(_local, "backend", None)
    _local.backend = name
    try:
        yield
    finally:
        _local.backend = previous


def is_available(name: str, device: Union[str, torch.device] = "cpu") -> bool:
    """Whether backend `name` can run on `device` here (its module imports and its own check passes).

    False for a name that is not registered.
    """
    if name not in _REGISTRY:
        return False
    try:
        module = importlib.import_module(_REGISTRY[name][0])
    except ImportError:
        return False
    check = getattr(module, "is_available", None)
    return True if check is None else bool(check(torch.device(device)))


def select_backend(y: torch.Tensor, backend: Optional[str] = None) -> str:
    """Resolve the backend name for a tensor: explicit > context > environment > auto."""
    name = backend or getattr(_local, "backend", None) or os.environ.get(ENV_VAR) or "auto"
    if name == "auto":
        if y.is_cuda:
            return "cupy" if is_available("cupy", y.device) else "wavefront"
        return "native" if is_available("native", y.device) else "wavefront"
    if name not in _REGISTRY:
        raise InverseBackendError(f"unknown inverse backend '{name}'; choose one of: auto, {', '.join(_REGISTRY)}")
    if name == "cupy":  # asked for by name: a missing CuPy is an error naming the install, not a fallback
        importlib.import_module(_REGISTRY[name][0]).require_cupy()
    if name == "cupy" and not y.is_cuda:
        raise InverseBackendError(
            "the cupy inverse backend needs CUDA tensors; use --device cuda or backend 'wavefront'"
        )
    if name in ("native", "reference") and y.is_cuda:
        raise InverseBackendError(
            f"the {name} inverse backend runs on the CPU only; use 'cupy' or 'wavefront' for CUDA tensors"
        )
    return name


def get_backend(name: str) -> Callable:
    module_name, function = _REGISTRY[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InverseBackendError(f"inverse backend '{name}' cannot be loaded: {exc}") from None
    return getattr(module, function)


def solve(
    y: torch.Tensor,
    weight: torch.Tensor,
    linv: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Invert the FInC unit: return x with finc_forward(x, weight) == y (see module docstring)."""
    if linv is None:
        linv = centre_inverse(weight)
    name = select_backend(y, backend)
    fn = get_backend(name)
    with torch.no_grad():
        return fn(y.detach().contiguous(), weight.detach().contiguous(), linv.detach().contiguous())


def centre_inverse(weight: torch.Tensor) -> torch.Tensor:
    """L⁻¹ for the unit-lower-triangular centre taps, (4, C', C'), computed in float64."""
    k = weight.shape[-1]
    centre = weight[:, :, :, k - 1, k - 1].detach().to(torch.float64)  # (4, C', C')
    eye = torch.eye(centre.shape[-1], dtype=torch.float64, device=centre.device).expand_as(centre)
    linv = torch.linalg.solve_triangular(centre, eye, upper=False, unitriangular=True)
    return linv.to(weight.dtype)
