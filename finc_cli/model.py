"""FlowModel: the multi-scale FInC Flow (Glow structure with a FInC unit per step; docs/model.md)."""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from finc_cli.config import MEMORY_CHOICES, Config, ModelConfig
from finc_cli.dataset_shapes import dataset_info
from finc_cli.errors import ConfigError, InputError
from finc_cli.flows.actnorm import ActNorm
from finc_cli.flows.conv1x1 import InvConv1x1
from finc_cli.flows.convolutions import conv_kind, make_conv
from finc_cli.flows.coupling import AffineCoupling
from finc_cli.flows.dequantizer import VariationalDequantizer
from finc_cli.flows.finc_conv import FInCConv2d
from finc_cli.flows.logit import LogitPreprocess, dequantize, quantize
from finc_cli.flows.memory import rebuild_error, run_steps
from finc_cli.flows.multiscale import ClassPrior, SplitPrior, Squeeze, gaussian_log_prob, standard_normal
from finc_cli.flows.sequential import FlowSequential
from finc_cli.losses import bits_per_dim

__all__ = ["FlowModel", "build_model", "check_architecture", "eval_mode", "level_channels"]


def _twos(n: int) -> int:
    """How many times n halves evenly."""
    count = 0
    while n > 0 and n % 2 == 0:
        n, count = n // 2, count + 1
    return count


def check_architecture(image_shape: Sequence[int], cfg: ModelConfig, name: Optional[str] = None) -> None:
    """Raise ConfigError (one line) unless H, W halve `levels` times and every FInC unit gets C % 4 == 0."""
    c, h, w = image_shape
    what = f"{name} {h}×{w}" if name else f"image {c}×{h}×{w}"
    max_levels = min(_twos(h), _twos(w))
    if cfg.levels > max_levels:
        if max_levels == 0:
            raise ConfigError(f"{what} cannot be squeezed: H and W must be even (model.levels={cfg.levels})")
        raise ConfigError(
            f"{what} allows at most {max_levels} levels (H and W must be divisible by 2^levels), "
            f"got model.levels={cfg.levels}"
        )
    for level, channels in enumerate(level_channels(c, cfg.levels), start=1):
        if cfg.conv == "finc" and channels % 4:
            raise ConfigError(f"level {level} has {channels} channels; the FInC unit needs a multiple of 4")


def level_channels(channels: int, levels: int) -> list[int]:
    """Channels inside each level: squeeze ×4, then the split keeps half before the next level."""
    out, c = [], channels
    for _ in range(levels):
        c *= 4  # squeeze
        out.append(c)
        c -= c // 2  # split keeps ceil(c / 2)
    return out


def flow_step(channels: int, cfg: ModelConfig) -> FlowSequential:
    """k×k conv → ActNorm → 1×1 conv → coupling (cfg.coupling: affine or additive); the k×k conv is cfg.conv's
    (none: a Glow step).

    The conv is named after its kind ("finc", "emerging", "cinc"): FInC checkpoints keep their keys.
    Its construction leaves the global RNG where it was (FlowModel draws the conv weights last), so
    the shared layers start the same whichever conv the step holds.
    """
    layers: OrderedDict = OrderedDict()
    with torch.random.fork_rng(devices=[]):
        conv = make_conv(cfg.conv, channels, cfg.kernel_size)
    if conv is not None:
        layers[cfg.conv] = conv
    layers["actnorm"] = ActNorm(channels)
    layers["conv1x1"] = InvConv1x1(channels, lu=cfg.conv1x1 == "lu")
    layers["coupling"] = AffineCoupling(channels, cfg.hidden, cfg.max_log_scale, additive=cfg.coupling == "additive")
    return FlowSequential(layers)


class Level(nn.Module):
    """Squeeze → K flow steps → split prior (absent on the last level)."""

    def __init__(
        self,
        in_channels: int,
        cfg: ModelConfig,
        split: bool,
        num_classes: int = 0,
        class_size: Optional[tuple[int, int]] = None,
    ):
        super().__init__()
        channels = 4 * in_channels
        self.squeeze = Squeeze()
        self.steps = FlowSequential(*[flow_step(channels, cfg) for _ in range(cfg.steps)])
        self.split = SplitPrior(channels, num_classes, class_size) if split else None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block (no ActNorm init as a side effect), the previous mode after, even on an error."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class FlowModel(nn.Module):
    """log p(v) for bin-scaled dequantized images v = (x + u) / bins, and its exact inverse.

    preprocess (logit) → for each of L levels: squeeze → K steps → split (all but the last);
    the last level's output is scored under N(0, I). Latents: every split z, then the final z.

    With `model_cfg.conditional` the model is p(x | y) for a class y in 0..num_classes-1: every
    prior (each split's and the top one) gets a per-class shift of its mean and log-scale, and with
    `class_weight` > 0 a classifier head on the mean-pooled top latent adds class_weight × its
    cross-entropy in bits to the training objective (Glow's `ycond`, `weight_y`; docs/model.md §14).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        bins: int,
        model_cfg: ModelConfig,
        name: Optional[str] = None,
        num_classes: int = 0,
        class_weight: float = 0.0,
    ):
        super().__init__()
        check_architecture(image_shape, model_cfg, name)
        if model_cfg.conditional and num_classes < 1:
            raise ConfigError(
                f"model.conditional needs the number of classes of {name or 'the dataset'}, got {num_classes}"
            )
        self.image_shape = tuple(int(s) for s in image_shape)  # (C, H, W)
        self.bins, self.model_cfg, self.name = int(bins), model_cfg, name
        self.num_classes = int(num_classes) if model_cfg.conditional else 0  # 0: unconditional
        self.class_weight = float(class_weight) if self.num_classes else 0.0
        self.preprocess = LogitPreprocess(model_cfg.alpha)
        channels = level_channels(self.image_shape[0], model_cfg.levels)
        in_channels = [self.image_shape[0]] + [c - c // 2 for c in channels[:-1]]
        # model.class_prior spatial: each level's class term has one value per position of its (H/2^l, W/2^l)
        spatial = model_cfg.class_prior == "spatial"
        sizes = [(self.image_shape[1] >> (i + 1), self.image_shape[2] >> (i + 1)) for i in range(model_cfg.levels)]
        self.levels = nn.ModuleList(
            Level(
                c_in,
                model_cfg,
                split=i < model_cfg.levels - 1,
                num_classes=self.num_classes,
                class_size=sizes[i] if spatial else None,
            )
            for i, c_in in enumerate(in_channels)
        )
        if self.num_classes:  # zero-initialised, without a random draw: the other layers start as unconditional
            top = channels[-1]
            self.top_prior = ClassPrior(self.num_classes, top, sizes[-1] if spatial else None)
            if self.class_weight > 0:
                with torch.random.fork_rng(devices=[]):
                    self.class_head = nn.Linear(top, self.num_classes)
                nn.init.zeros_(self.class_head.weight)
                nn.init.zeros_(self.class_head.bias)
        self.dequantizer = (
            VariationalDequantizer(self.image_shape[0], self.bins, model_cfg.dequant_hidden, model_cfg.dequant_steps)
            if model_cfg.dequantization == "variational"
            else None
        )
        # The k×k convolutions draw their weights last, in module order: every layer they share with
        # the other model.conv choices (and the Glow model) gets the same initial values for a seed,
        # so a comparison differs in the convolution alone (docs/model.md §10).
        for _, conv in self.invertible_convs():
            conv.reset_parameters()
        for _, unit in self.finc_units():
            unit.gain_cap = model_cfg.finc_gain_cap
        self.memory = "store"  # train.memory: what the flow steps keep for backward (set_memory)

    # -- shapes and bookkeeping ---------------------------------------------------------------

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def has_class_head(self) -> bool:
        return hasattr(self, "class_head")

    def check_classes(self, y: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
        """y as int64 (n,) on the model's device when the model is class-conditional (None otherwise); a
        missing, unexpected, misshapen or out-of-range y is an InputError of one line.

        The range is checked while y is on the host: a y already on an accelerator is not read back
        (that would wait for the device on every forward); classes are checked where they enter,
        by the label readers and `finc sample --class`."""
        if not self.conditional:
            if y is not None:
                raise InputError("this model is not class-conditional (model.conditional: false); give no class")
            return None
        if y is None:
            raise InputError(
                f"this model is class-conditional (model.conditional: true): give the class "
                f"(0..{self.num_classes - 1}) "
                "of every image"
            )
        y = torch.as_tensor(y)
        if y.dtype.is_floating_point or y.dtype == torch.bool or tuple(y.shape) != (n,):
            raise InputError(f"classes must be {n} integers, got shape {tuple(y.shape)} of {y.dtype}")
        y = y.long()
        if n and y.device.type == "cpu" and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise InputError(f"classes must be in 0..{self.num_classes - 1}, got {int(y.min())}..{int(y.max())}")
        return y.to(self._param().device)

    def _any_class(self, n: int) -> Optional[torch.Tensor]:
        """A stand-in class (0) for work whose result does not depend on it (the latents, ActNorm's init)."""
        return torch.zeros(n, dtype=torch.long, device=self._param().device) if self.conditional else None

    @property
    def num_dims(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """(C, H, W) of every latent in encode order: each split z, then the final z."""
        _, h, w = self.image_shape
        shapes = []
        for c, level in zip(level_channels(self.image_shape[0], len(self.levels)), self.levels):
            h, w = h // 2, w // 2
            shapes.append((c // 2, h, w) if level.split is not None else (c, h, w))
        return shapes

    def _param(self) -> torch.Tensor:
        return next(self.parameters())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def finc_units(self) -> list[tuple[str, FInCConv2d]]:
        return [(n, m) for n, m in self.named_modules() if isinstance(m, FInCConv2d)]

    def invertible_convs(self) -> list[tuple[str, nn.Module]]:
        """(name, layer) of every k×k invertible convolution, whichever model.conv chose (none: empty)."""
        return [(n, m) for n, m in self.named_modules() if conv_kind(m) is not None]

    def set_autocast(self, dtype: Optional[torch.dtype]) -> None:
        """Run every coupling conditioner under autocast(dtype), or in full precision with None."""
        for m in self.modules():
            if isinstance(m, AffineCoupling):
                m.autocast_dtype = dtype

    def set_memory(self, mode: str) -> None:
        """What each level's flow steps keep for the backward pass: store | checkpoint | invert (flows/memory.py).

        It changes memory and time only, never a value or a gradient beyond round-off; without grad
        (evaluation, sampling) every mode runs the plain forward.
        """
        if mode not in MEMORY_CHOICES:
            raise ConfigError(f"unknown train.memory '{mode}'; choose from {', '.join(MEMORY_CHOICES)}")
        self.memory = mode

    def dequantize(
        self, x: torch.Tensor, noise: str = "uniform", generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Integer images (B, C, H, W) -> v = (x + u) / bins on the model's device and dtype.

        noise='uniform': u ~ U[0, 1) from `generator`; 'center': u = 1/2 (deterministic, for encoding).
        """
        p = self._param()
        return dequantize(x.to(p.device), self.bins, generator=generator, noise=noise, dtype=p.dtype)

    # -- the map v <-> latents ----------------------------------------------------------------

    def v_to_latents(
        self, v: torch.Tensor, y: Optional[torch.Tensor] = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(latents, log p(v) of shape (B,)) for v (B, C, H, W) in [0, 1); log p(v | y) on a conditional model.

        The latents never depend on y: only the priors do.
        """
        y = self.check_classes(y, v.shape[0])
        latents, log_det, split_means = self._through_levels(v)
        return latents, log_det + self._prior_log_prob(latents, split_means, y)

    def _through_levels(self, v: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, list[tuple]]:
        """The class-free part of v_to_latents: (latents, the log-det of preprocessing and every level (B,), and
        each split prior's (mean, log_std) before its class term)."""
        h, log_det = self.preprocess(v)  # (B, C, H, W)
        latents, split_means = [], []
        for level in self.levels:
            h, _ = level.squeeze(h)  # (B, 4C, H/2, W/2)
            h, logdet = run_steps(level.steps, h, self.memory)
            log_det = log_det + logdet
            if level.split is not None:
                keep = level.split.keep
                h, z = h[:, :keep], h[:, keep:]  # h (B, ceil(C/2), H, W), z (B, floor(C/2), H, W)
                latents.append(z)
                split_means.append(level.split.base(h))
        latents.append(h)
        return latents, log_det, split_means

    def _prior_log_prob(self, latents: list[torch.Tensor], split_means: list[tuple], y: Optional[torch.Tensor]):
        """(B,) log-density of the latents under the split and top priors, of class y on a conditional model."""
        splits = [level.split for level in self.levels if level.split is not None]
        log_p = 0.0
        for split, z, (mean, log_std) in zip(splits, latents, split_means):
            log_p = log_p + gaussian_log_prob(z, *split.add_class(mean, log_std, y))
        top = latents[-1]
        return log_p + (gaussian_log_prob(top) if y is None else gaussian_log_prob(top, *self.top_prior(y)))

    def latents_to_v(
        self,
        latents: Sequence[Optional[torch.Tensor]],
        temperature: float = 1.0,
        generator: Optional[torch.Generator] = None,
        y: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Invert v_to_latents; a None split latent is sampled from its prior at `temperature` (given the
        class y on a conditional model; y is needed only then).

        The FInC inverses run on the backend `finc_cli.inverse.use_backend` selects (docs/inverse.md §5).
        """
        h = latents[-1]
        if any(z is None for z in latents[:-1]):
            y = self.check_classes(y, h.shape[0])
        for i in reversed(range(len(self.levels))):
            level = self.levels[i]
            if level.split is not None:
                h = level.split.inverse(h, latents[i], temperature=temperature, generator=generator, y=y)
            h, _ = level.steps.inverse(h)
            h, _ = level.squeeze.inverse(h)  # (B, C, 2H, 2W)
        v, _ = self.preprocess.inverse(h)
        return v

    # -- densities ----------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        noise: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        y: Optional[torch.Tensor] = None,
        objective: bool = False,
    ) -> torch.Tensor:
        """(B,) bits/dim of integer images x (B, C, H, W) in [0, bins-1]: the one loss of training,
        evaluation and benchmarks.

        `noise` ∈ [0, 1) is the step's uniform noise (training passes it, on x's device), else it is
        drawn from `generator`. With uniform dequantization it is u itself; with variational
        dequantization u ~ q(u | x) is the dequantizer's transform of it, and the figure is the
        variational bound -log p(x + u) + log q(u | x) in bits/dim (docs/model.md §2).

        A class-conditional model needs the classes y (B,) and gives -log2 p(x | y) per dimension;
        with `objective` (training) and a class head, class_weight × the head's cross-entropy in bits
        per image is added (docs/model.md §14).
        """
        y = self.check_classes(y, x.shape[0])
        p = self._param()
        if noise is None:
            device = generator.device if generator is not None else p.device
            noise = torch.rand(x.shape, generator=generator, device=device, dtype=p.dtype).to(p.device)
        x = x.to(noise.device)
        u, log_q = self._noise_to_u(x, noise)
        v = (x.to(u.dtype) + u) / self.bins  # dequantized, bin-scaled (docs/model.md §2)
        if y is None:
            return bits_per_dim(log_q - self.log_prob(v), self.num_dims, self.bins)
        latents, log_p = self.v_to_latents(v, y)
        bpd = bits_per_dim(log_q - log_p, self.num_dims, self.bins)
        if objective and self.has_class_head:
            ce = F.cross_entropy(self.head_logits(latents[-1]), y, reduction="none")  # (B,) nats per image
            bpd = bpd + self.class_weight * ce / math.log(2)
        return bpd

    def _noise_to_u(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, Union[torch.Tensor, float]]:
        """(u, log q(u | x)): the uniform noise itself (log q = 0) or the variational dequantizer's u ~ q(u | x)
        with its log-density; outside `store` the dequantizer's activations are recomputed in backward, not kept."""
        if self.dequantizer is None:
            return noise, 0.0
        if self.memory == "store" or not torch.is_grad_enabled():
            return self.dequantizer(x, noise)
        return checkpoint(self.dequantizer, x, noise, use_reentrant=False)

    def log_prob(self, v: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B,) log-density of the bin-scaled dequantized image v (what `forward` turns into bits/dim);
        log p(v | y) on a class-conditional model."""
        return self.v_to_latents(v, y)[1]

    def head_logits(self, top: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) class logits of the class head from the top latent (B, C, H, W), mean-pooled."""
        return self.class_head(top.mean(dim=(2, 3)))

    @torch.no_grad()
    def class_bpd(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) bits/dim of x given each class, every class with the same dequantization noise."""
        return self.class_scores(x, noise)[0]

    @torch.no_grad()
    def class_scores(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(class_bpd (B, num_classes), the class head's logits (B, num_classes) or None without a head).

        One pass through the flow: the latents and the log-det do not depend on the class, only the
        priors do, so each class costs its prior terms alone, not a forward.
        """
        u, log_q = self._noise_to_u(x.to(noise.device), noise)
        v = (x.to(noise.device).to(u.dtype) + u) / self.bins
        latents, log_det, split_means = self._through_levels(v)
        columns = []
        for c in range(self.num_classes):
            y = torch.full((x.shape[0],), c, dtype=torch.long, device=v.device)
            log_p = log_det + self._prior_log_prob(latents, split_means, y)
            columns.append(bits_per_dim(log_q - log_p, self.num_dims, self.bins))
        logits = self.head_logits(latents[-1]) if self.has_class_head else None
        return torch.stack(columns, dim=1), logits

    @torch.no_grad()
    def classify_logits(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) the class head's logits for integer images x with dequantization noise `noise`."""
        x = x.to(noise.device)
        u, _ = self._noise_to_u(x, noise)
        latents, _, _ = self._through_levels((x.to(u.dtype) + u) / self.bins)
        return self.head_logits(latents[-1])

    # -- encode / decode / sample -------------------------------------------------------------

    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, noise: str = "center", generator: Optional[torch.Generator] = None
    ) -> list[torch.Tensor]:
        """Integer images -> latents (every split z, then the final z); deterministic by default."""
        with eval_mode(self):
            return self.v_to_latents(self.dequantize(x, noise, generator), self._any_class(x.shape[0]))[0]

    @torch.no_grad()
    def decode(self, latents: Sequence[torch.Tensor]) -> torch.Tensor:
        """Latents -> uint8 images (B, C, H, W); decode(encode(x)) == x."""
        return quantize(self.latents_to_v(list(latents)), self.bins)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        generator: Optional[torch.Generator] = None,
        y: Optional[torch.Tensor | int] = None,
    ) -> torch.Tensor:
        """n uint8 images (n, C, H, W) with z ~ N(0, T²) at every level (split means included).

        On a class-conditional model every level's prior is that of class y (an int for all n, or (n,)
        classes); without y, sample i is of class i mod num_classes.
        """
        top = standard_normal((n, *self.latent_shapes()[-1]), self._param(), generator) * temperature
        if self.conditional:
            if y is None:
                y = torch.arange(n) % self.num_classes
            elif isinstance(y, int):
                y = torch.full((n,), y)
            y = self.check_classes(y, n)
            mean, log_std = self.top_prior(y)
            top = mean + torch.exp(log_std) * top
        latents = [None] * (len(self.levels) - 1) + [top]
        return quantize(self.latents_to_v(latents, temperature, generator, y=y), self.bins)

    # -- health and init ----------------------------------------------------------------------

    @torch.no_grad()
    def reconstruction_report(self, x: torch.Tensor) -> list[dict]:
        """Per k×k convolution (FInC, Emerging or CInC): invert it alone on its recorded output of a forward of x."""
        units = self.invertible_convs()
        records: dict = {}

        def record(name):
            return lambda module, inputs, output: records.__setitem__(name, (inputs[0], output[0]))

        hooks = [m.register_forward_hook(record(name)) for name, m in units]
        try:
            with eval_mode(self):
                self.v_to_latents(self.dequantize(x, "center"), self._any_class(x.shape[0]))
        finally:
            for hook in hooks:
                hook.remove()
        report = []
        for name, unit in units:
            x_in, y_out = records[name]
            err = (unit.inverse(y_out)[0] - x_in).abs()
            report.append({"layer": name, "max_abs_err": err.max().item(), "mean_abs_err": err.mean().item()})
        return report

    @torch.no_grad()
    def rebuild_errors(self, x: torch.Tensor) -> list[float]:
        """Per level, the largest error of its layers' inputs rebuilt by inversion from the level's output, as
        `train.memory: invert` rebuilds them in backward, on a forward of the integer images x."""
        errors = []
        with eval_mode(self):
            h, _ = self.preprocess(self.dequantize(x, "center"))
            for level in self.levels:
                h, _ = level.squeeze(h)
                errors.append(rebuild_error(level.steps, h))
                h, _ = level.steps(h)
                if level.split is not None:
                    h = h[:, : level.split.keep]
        return errors

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> None:
        """One forward in train mode on integer images x: triggers ActNorm's data-dependent init."""
        was_training = self.training
        self.train()
        try:
            self.log_prob(self.dequantize(x, "uniform", generator), self._any_class(x.shape[0]))
        finally:
            self.train(was_training)


def build_model(config: Config) -> FlowModel:
    """The FlowModel for config.data.name's image shape and bins, with config.model's architecture."""
    info = dataset_info(config.data.name)
    if config.model.conditional and info.label_kind != "class":
        raise ConfigError(
            f"model.conditional needs one class per image, but {info.name} has {info.num_classes} binary "
            f"{info.label_kind}; set model.conditional=false"
        )
    return FlowModel(
        (info.channels, info.height, info.width),
        info.bins,
        config.model,
        name=info.name,
        num_classes=info.num_classes if config.model.conditional else 0,
        class_weight=config.train.class_weight,
    )
