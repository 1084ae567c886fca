"""The cubic schedule that movement pruning moves its density, threshold and λ along."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CubicSchedule:
    """`initial` for `warmup_steps`, then `final + (initial − final)(1 − p)³`, then `final` for the last `hold_steps`.

    p goes from 0 to 1 over the steps between warm-up and hold; the curve moves fast at first and
    flattens as it arrives, which leaves the model time to recover from the last prunings.
    """

    initial: float
    final: float
    total_steps: int
    warmup_steps: int = 0
    hold_steps: int = 0

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be ≥ 1, got {self.total_steps}")
        if self.warmup_steps < 0 or self.hold_steps < 0 or self.warmup_steps + self.hold_steps > self.total_steps:
            raise ValueError(
                f"warm-up ({self.warmup_steps}) and hold ({self.hold_steps}) steps must fit in {self.total_steps} steps"
            )

    def progress(self, step: int) -> float:
        """p in [0, 1] at `step`."""
        ramp = self.total_steps - self.warmup_steps - self.hold_steps
        if ramp <= 0:
            return 0.0 if step < self.warmup_steps else 1.0
        return min(max((step - self.warmup_steps) / ramp, 0.0), 1.0)

    def __call__(self, step: int) -> float:
        return self.final + (self.initial - self.final) * (1.0 - self.progress(step)) ** 3
