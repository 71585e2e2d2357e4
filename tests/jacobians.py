"""Dense Jacobians for the log-det tests, built with one batched backward instead of a loop per entry."""

import torch


def dense_jacobian(fn, x: torch.Tensor) -> torch.Tensor:
    """(D_out, D_in) Jacobian of a per-sample map `fn` at one input x of shape (1, ...).

    Identity-basis trick: x is copied D_out times, and one backward with the identity as the
    output gradient gives row i of the Jacobian as the gradient of copy i. `fn` must treat the
    samples of a batch independently (layers in eval mode, ActNorm already initialised); its
    output may be a tensor or a list of tensors (flattened per sample and concatenated).
    """

    def flat(out):
        parts = out if isinstance(out, (list, tuple)) else [out]
        return torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)  # (B, D_out)

    with torch.no_grad():
        d_out = flat(fn(x)).shape[1]
    xs = x.detach().repeat(d_out, *[1] * (x.dim() - 1)).requires_grad_(True)  # (D_out, ...)
    y = flat(fn(xs))  # (D_out, D_out): row i is copy i's output
    (grad,) = torch.autograd.grad(y, xs, torch.eye(d_out, dtype=y.dtype, device=y.device))
    return grad.reshape(d_out, -1)
