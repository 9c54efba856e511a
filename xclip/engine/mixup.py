"""Mixup / CutMix on video batches with label smoothing, and soft-target cross-entropy.

Per batch, with probability ``switch_prob`` CutMix (one box, the same for
every frame of a clip, cut from the batch reversed) else Mixup; lambda is
drawn from Beta(alpha, alpha). Targets are label-smoothed one-hot vectors
(on = 1 - eps + eps/C, off = eps/C) blended by the same lambda; for CutMix
lambda is corrected to the box's actual area.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["smooth_one_hot", "MixupCutmix", "soft_target_cross_entropy"]


def smooth_one_hot(labels: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D [B], got shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    out.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)
    return out


def soft_target_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """mean_b( -sum_k target[b,k] * log_softmax(logits)[b,k] ), computed in float32."""
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the same shape")
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class MixupCutmix:
    def __init__(self, num_classes: int, *, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 switch_prob: float = 0.5, smoothing: float = 0.1, generator: torch.Generator | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup/cutmix alphas must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
        if not 0.0 <= switch_prob <= 1.0:
            raise ValueError(f"switch_prob must be in [0, 1], got {switch_prob}")
        self.num_classes = num_classes
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.switch_prob = float(switch_prob)
        self.smoothing = float(smoothing)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    @property
    def active(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _beta(self, alpha: float) -> float:
        # Beta(a, a) from two Gammas, drawn with our own generator (reproducible, resumable).
        x = _gamma(alpha, self.generator)
        y = _gamma(alpha, self.generator)
        return x / (x + y) if x + y > 0 else 0.5

    def __call__(self, video: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """video: [B, ..., H, W]; labels: [B] int -> (mixed video, soft targets [B, C])."""
        if video.ndim < 3 or video.shape[0] != labels.shape[0]:
            raise ValueError(f"video [B, ..., H, W] and labels [B] must agree on B: got {tuple(video.shape)} and {tuple(labels.shape)}")
        target = smooth_one_hot(labels, self.num_classes, self.smoothing)
        if not self.active or video.shape[0] < 2:
            return video, target
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or self._rand() < self.switch_prob)
        flipped = video.flip(0)
        if use_cutmix:
            lam = self._beta(self.cutmix_alpha)
            H, W = video.shape[-2], video.shape[-1]
            cut = math.sqrt(1.0 - lam)
            ch, cw = int(H * cut), int(W * cut)
            cy = int(self._rand() * H)
            cx = int(self._rand() * W)
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, H)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, W)
            video = video.clone()
            video[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(H * W)
        else:
            lam = self._beta(self.mixup_alpha)
            video = video * lam + flipped * (1.0 - lam)
        target = target * lam + target.flip(0) * (1.0 - lam)
        return video, target

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def _gamma(alpha: float, gen: torch.Generator) -> float:
    """Marsaglia-Tsang Gamma(alpha, 1) sampler on a torch.Generator."""
    boost = 1.0
    if alpha < 1.0:
        u = float(torch.rand((), generator=gen, dtype=torch.float64))
        boost = max(u, 1e-300) ** (1.0 / alpha)
        alpha += 1.0
    d = alpha - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = float(torch.randn((), generator=gen, dtype=torch.float64))
        v = (1.0 + c * x) ** 3
        if v <= 0:
            continue
        u = float(torch.rand((), generator=gen, dtype=torch.float64))
        if math.log(max(u, 1e-300)) < 0.5 * x * x + d - d * v + d * math.log(v):
            return d * v * boost
