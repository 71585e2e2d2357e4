"""Health of the composed inverse: round trip, decode amplification, FInC unit inverse gains (docs/inverse.md §11)."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

from finc_cli import inverse
from finc_cli.flows.finc_conv import FInCConv2d
from finc_cli.flows.logit import quantize
from finc_cli.model import FlowModel

__all__ = [
    "amplification_threshold",
    "composed_check",
    "composed_warning",
    "GAIN_ITERATIONS",
    "health_record",
    "inverse_gain",
    "PERTURBATION",
    "SAFETY_FACTOR",
    "transpose_inverse",
    "unit_gains",
    "UNIT_ROUNDOFF",
]

PERTURBATION = 1e-7  # relative latent perturbation: about one float32 ulp
SAFETY_FACTOR = 10.0  # round-off adds up over layers and images; keep the prediction 10× under half a level
GAIN_ITERATIONS = 20  # power-iteration steps for a unit's inverse gain
UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def amplification_threshold(bins: int, dtype: torch.dtype = torch.float32) -> float:
    """Largest decode amplification that keeps dtype's round-off under half a level (docs/inverse.md §11).

    Round-off of relative size u in the latents reaches the image as about amplification · u (in [0, 1]
    units); a pixel stays exact while that is below 1 / (2·bins). With a safety factor s:
    amplification ≤ 1 / (2 · bins · u · s), e.g. 3.3e3 for 256 levels in float32.
    """
    return 1.0 / (2 * bins * UNIT_ROUNDOFF[dtype] * SAFETY_FACTOR)


@contextlib.contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def composed_check(model: FlowModel, x: torch.Tensor, trials: int = 2, seed: int = 0) -> dict:
    """Encode → decode the integer images x in the model's own precision and estimate the decode's amplification.

    amplification = max |Δv| / PERTURBATION, where Δv (in [0, 1] units) is the change of the decoded
    image when every latent z is moved by PERTURBATION·|z| in a random sign pattern (worst of `trials`).
    """
    dtype = next(model.parameters()).dtype
    x = x.to(next(model.parameters()).device)
    g = torch.Generator().manual_seed(seed)
    with _evaluating(model):
        latents = model.encode(x)
        v = model.latents_to_v(latents)
        decoded = quantize(v, model.bins)
        errors = (decoded.long() - x.long()).abs()
        amplification = 0.0
        for _ in range(trials):
            signs = [torch.randint(0, 2, z.shape, generator=g).to(z) * 2 - 1 for z in latents]
            moved = [z + PERTURBATION * z.abs() * s for z, s in zip(latents, signs)]
            change = (model.latents_to_v(moved) - v).abs().max().item()
            amplification = max(amplification, change / PERTURBATION)
    threshold = amplification_threshold(model.bins, dtype)
    wrong = int((errors > 0).sum())
    return {
        "precision": str(dtype).replace("torch.", ""),
        "n_images": int(x.shape[0]),
        "exact": wrong == 0,
        "wrong_values": wrong,
        "wrong_share": wrong / errors.numel(),
        "worst_levels": int(errors.max()) if errors.numel() else 0,
        "amplification": amplification,
        "threshold": threshold,
        "trusted": wrong == 0 and amplification <= threshold,
    }


def composed_warning(check: dict) -> Optional[str]:
    """One line naming cause and remedy when the composed check is not trusted, else None."""
    if check["trusted"]:
        return None
    return (
        f"warning: the {check['precision']} round trip of the whole model is not trustworthy "
        f"({100 * check['wrong_share']:.1f}% of pixel values wrong, up to {check['worst_levels']} levels; "
        f"decode amplification {check['amplification']:.2g} > {check['threshold']:.2g}): the FInC units' inverse "
        f"gains compound through the depth; decode with --decode-precision float64 (or auto), and train with "
        f"model.finc_gain_cap to keep the units well conditioned"
    )


def health_record(model: FlowModel, probe: torch.Tensor, images: int = 4) -> tuple[dict, Optional[str]]:
    """(the validation record's composed-check keys, the warning line or None) for the first `images` of probe."""
    check = composed_check(model, probe[:images])
    gains = unit_gains(model)
    record = {
        "roundtrip_exact": check["exact"],
        "roundtrip_wrong_share": check["wrong_share"],
        "roundtrip_worst_levels": check["worst_levels"],
        "decode_amplification": check["amplification"],
    }
    if gains:
        record["finc_gain_max"] = max(gains.values())
    return record, composed_warning(check)


def _group_reverse(t: torch.Tensor) -> torch.Tensor:
    """Reverse the channel order inside each of the 4 groups of a (B, 4C', H, W) tensor."""
    b, c, h, w = t.shape
    return t.reshape(b, 4, c // 4, h, w).flip(2).reshape(b, c, h, w)  # (B, 4, C', H, W) reversed in C'


def transpose_inverse(weight: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A⁻ᵀu for the FInC unit A of effective kernel `weight` (4, C', C', k, k).

    Aᵀ reads from the opposite corner with transposed taps; reversing the image (both spatial flips)
    and the channels of each group turns it back into a FInC unit of kernel J·W_tᵀ·J per tap, with a
    unit lower triangular centre (docs/inverse.md §11). So A⁻ᵀ = R · solve(·, JWᵀJ) · R.
    """

    def reverse(t: torch.Tensor) -> torch.Tensor:
        return _group_reverse(t).flip(-2, -1)  # (B, C, H, W), R = R⁻¹

    flipped = weight.transpose(1, 2).flip(1, 2)  # (4, C', C', k, k): J·W_tᵀ·J per group and tap
    return reverse(inverse.solve(reverse(u).contiguous(), flipped.contiguous()))


def inverse_gain(unit: FInCConv2d, height: int, width: int, iterations: int = GAIN_ITERATIONS, seed: int = 0) -> float:
    """‖A⁻¹‖₂ of the unit at H×W: power iteration on A⁻ᵀA⁻¹, in float64."""
    weight = unit.effective_weight().detach().double()
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, unit.channels, height, width, generator=g, dtype=torch.float64).to(weight.device)
    gain = 0.0
    for _ in range(iterations):
        v = v / v.norm()
        x = inverse.solve(v, weight)
        gain = x.norm().item()
        v = transpose_inverse(weight, x)
    return gain


def unit_gains(model: FlowModel, iterations: int = GAIN_ITERATIONS) -> dict[str, float]:
    """{layer name: inverse gain} of every FInC unit, each at the spatial size it runs at in the model."""
    _, h, w = model.image_shape
    gains = {}
    for i, level in enumerate(model.levels):
        h, w = h // 2, w // 2  # each level starts with a squeeze
        for name, unit in level.steps.named_modules():
            if isinstance(unit, FInCConv2d):
                gains[f"levels.{i}.steps.{name}"] = inverse_gain(unit, h, w, iterations)
    return gains
