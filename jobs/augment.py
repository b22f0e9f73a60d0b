"""Random augmentation of training batches (never of validation, test or serving inputs).

Random draws come from torch's global generator, whose state every checkpoint saves, so a
resumed trial augments exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from jobs.spec import AugmentationSpec


def augment(x: torch.Tensor, spec: AugmentationSpec) -> torch.Tensor:
    """Augment a batch; image transforms apply to ``(N, C, H, W)`` batches only."""
    n = x.shape[0]
    if x.dim() == 4:
        if spec.flip:
            flip = (torch.rand(n) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if spec.rotation_degrees or spec.shift:
            x = _affine(x, spec.rotation_degrees, spec.shift)
    if spec.noise_std:
        x = x + torch.randn(x.shape).to(x.device, x.dtype) * spec.noise_std
    return x


def _affine(x: torch.Tensor, degrees: float, shift: int) -> torch.Tensor:
    n, _, h, w = x.shape
    angle = (torch.rand(n) * 2 - 1) * math.radians(degrees)
    # affine_grid works in [-1, 1] coordinates: a pixel is 2 / size of them.
    dx = (torch.randint(-shift, shift + 1, (n,)) * 2.0 / w) if shift else torch.zeros(n)
    dy = (torch.randint(-shift, shift + 1, (n,)) * 2.0 / h) if shift else torch.zeros(n)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos, -sin, dx], dim=1), torch.stack([sin, cos, dy], dim=1)], dim=1
    ).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def mixup(x: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Blend each example with a random partner; returns the batch, the partners' order and
    the weight of the originals (the loss blends the two targets with the same weight)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    order = torch.randperm(x.shape[0]).to(x.device)
    return lam * x + (1 - lam) * x[order], order, lam
