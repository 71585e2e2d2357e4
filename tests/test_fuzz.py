"""Fuzzing: random small configurations either round-trip or fail with a clear error.

Plain loops over a seeded `random.Random` (no hypothesis dependency): each case draws levels,
steps, kernel size, coupling width, image channels and size, the 1×1 conv variant, FInC on/off
and the dtype; builds the config through the typed loader, then the model; runs forward and
inverse. The only acceptable failures are ConfigError / ValueError with a message that names
the offending setting — never a crash deep in the stack.
"""

from __future__ import annotations

import random

import pytest
import torch

from finc_cli.config import Config, ConfigError, apply_overrides
from finc_cli.model import FlowModel

CASES = 32
# Words a clear configuration error uses: it names the setting or the shape that is wrong.
CLEAR = ("model.", "H and W", "channels", "must be")


def _draw(rng: random.Random) -> tuple[dict, tuple[int, int, int], torch.dtype]:
    def pick(valid: list, invalid: list):  # an invalid value about one time in twelve
        return rng.choice(invalid) if rng.random() < 1 / 12 else rng.choice(valid)

    overrides = {
        "model.levels": pick([1, 2, 2, 3], [0, -1]),
        "model.steps": pick([1, 2], [0, 1.5]),
        "model.kernel_size": pick([1, 2, 3, 3, 4, 5], [0, -2]),
        "model.hidden": pick([1, 4, 8], [0, "wide"]),
        "model.conv1x1": pick(["lu", "plain"], ["qr"]),
        "model.conv": "finc" if rng.random() < 0.85 else "none",
    }
    size = lambda: pick([2, 4, 4, 8, 8], [3, 5, 6, 12])  # noqa: E731 - odd or non-power-of-2 sizes limit the levels
    shape = (rng.choice([1, 2, 3]), size(), size())
    return overrides, shape, rng.choice([torch.float32, torch.float64])


def _randomize(model: FlowModel, gen: torch.Generator) -> None:
    """Move every parameter off its identity-like init (small, so float32 stays well conditioned)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _round_trip(cfg: Config, shape, dtype: torch.dtype, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    model = FlowModel(shape, 256, cfg.model).to(dtype)
    x = torch.randint(0, 256, (2, *shape), generator=gen).to(torch.uint8)
    model.initialize(x, generator=gen)
    _randomize(model, gen)
    model.eval()
    v = (x.to(dtype) + torch.rand(x.shape, generator=gen, dtype=dtype)) / 256  # (B, C, H, W)
    with torch.no_grad():
        latents, log_p = model.v_to_latents(v)
        v_back = model.latents_to_v(latents)
    assert [tuple(z.shape[1:]) for z in latents] == model.latent_shapes()
    assert log_p.shape == (2,) and torch.isfinite(log_p).all()
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    err = (v_back - v).abs().max().item()
    assert err < tol, f"round trip error {err:.2e} >= {tol:g}"
    assert torch.equal(model.decode(model.encode(x)), x)


def _case(seed: int):
    rng = random.Random(seed)
    overrides, shape, dtype = _draw(rng)
    try:
        cfg = apply_overrides(Config(), overrides)
        _round_trip(cfg, shape, dtype, seed)
    except (ConfigError, ValueError) as exc:  # ConfigError is a ValueError
        message = str(exc)
        assert "\n" not in message.strip(), f"multi-line error: {message!r}"
        assert any(word in message for word in CLEAR), f"unclear error for {overrides} {shape}: {message!r}"
        return "error"
    return "ok"


def test_fuzz_random_configurations_round_trip_or_fail_clearly():
    outcomes = {"ok": 0, "error": 0}
    for seed in range(CASES):
        try:
            outcomes[_case(seed)] += 1
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - any other type is the bug this test exists for
            rng = random.Random(seed)
            pytest.fail(f"seed {seed} {_draw(rng)[:2]}: {type(exc).__name__}: {exc}")
    # The generator must exercise both branches, or the test proves nothing.
    assert outcomes["ok"] >= 8 and outcomes["error"] >= 4, outcomes
