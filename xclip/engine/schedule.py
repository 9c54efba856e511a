"""Cosine learning-rate schedule with linear warm-up, stepped per optimiser step.

For step ``s`` (0-based, the step about to be taken) of ``total`` with
``warmup`` warm-up steps, each parameter group's rate is

    warm-up:  init + (base - init) * s / warmup                 (s < warmup)
    cosine:   floor + (base - floor) * (1 + cos(pi * p)) / 2,   p = (s - warmup) / (total - warmup)

with ``floor = base * min_lr_ratio`` (the paper: lr / 100). Past ``total``
the rate stays at the floor.

``hold`` maps a parameter group's ``name`` to a step ``h``: that group's rate
is 0 before step ``h`` (the group is held still), then ramps linearly from 0
to the schedule's value over ``max(warmup, 1)`` steps. The trainer uses it to
hold a from-scratch text tower still while the video side starts learning
(``train.text_freeze_epochs``). The state is the step counter (and ``hold``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["CosineWarmupSchedule"]


class CosineWarmupSchedule:
    def __init__(self, optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 0,
                 min_lr_ratio: float = 0.01, warmup_init_lr: float = 0.0, hold: dict[str, int] | None = None):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if warmup_steps < 0 or warmup_steps > total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr_ratio = float(min_lr_ratio)
        self.warmup_init_lr = float(warmup_init_lr)
        self.hold = {str(k): int(v) for k, v in (hold or {}).items()}
        names = {g.get("name") for g in optimizer.param_groups}
        unknown = sorted(set(self.hold) - names)
        if unknown:
            raise ValueError(f"hold names parameter group(s) {unknown} that the optimizer does not have "
                             f"(its groups: {sorted(n for n in names if n)})")
        bad = {k: v for k, v in self.hold.items() if v < 0}
        if bad:
            raise ValueError(f"hold steps must be >= 0, got {bad}")
        for g in optimizer.param_groups:
            g.setdefault("base_lr", g["lr"])
        self.step_count = 0
        self._apply()

    def lr_at(self, step: int, base_lr: float) -> float:
        floor = base_lr * self.min_lr_ratio
        if step < self.warmup_steps:
            return self.warmup_init_lr + (base_lr - self.warmup_init_lr) * step / self.warmup_steps
        span = self.total_steps - self.warmup_steps
        if span <= 0:
            return base_lr
        p = min(1.0, (step - self.warmup_steps) / span)
        return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * p))

    def hold_factor(self, step: int, group_name: str | None) -> float:
        """1 for groups that are not held; 0 before their hold step, then a linear ramp to 1."""
        h = self.hold.get(group_name) if group_name is not None else None
        if h is None:
            return 1.0
        if step < h:
            return 0.0
        return min(1.0, (step - h + 1) / max(self.warmup_steps, 1))

    def _apply(self) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(self.step_count, g["base_lr"]) * self.hold_factor(self.step_count, g.get("name"))

    def step(self) -> None:
        """Advance one optimiser step and set the rates for the next one."""
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "min_lr_ratio": self.min_lr_ratio, "warmup_init_lr": self.warmup_init_lr, "hold": dict(self.hold)}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self._apply()
