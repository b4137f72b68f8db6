"""Restart policy: how long to wait before retrying, and when to call an actor failed."""

from __future__ import annotations

import random

import attrs

__all__ = ["RestartPolicy"]


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (value > 0 and value != float("inf")):
        raise ValueError(
            f"RestartPolicy.{attribute.name} must be a positive finite number, got {value!r}"
        )


@attrs.frozen(kw_only=True)
class RestartPolicy:
    """Backoff and restart-intensity settings, immutable; derive variants with ``attrs.evolve``.

    Waits are capped exponential with full jitter: attempt ``n`` (0-based) waits a uniform
    random time in ``[0, min(max_delay, initial_delay * multiplier**n)]``, so actors that
    failed together do not retry together. The attempt count resets once the actor has
    been healthy for ``reset_after`` seconds: deliberately longer than ``initial_delay``,
    so a device that fails seconds after each recovery keeps backing off.

    More than ``max_restarts`` restarts within ``restart_window`` seconds marks the actor
    ``failed``: it is still retried, at ``max_delay`` less up to a fifth of jitter, until
    it stays healthy for ``reset_after``. A failed actor never takes the runtime down.
    """

    initial_delay: float = attrs.field(default=1.0, validator=_positive)
    max_delay: float = attrs.field(default=60.0, validator=_positive)
    multiplier: float = attrs.field(default=2.0, validator=_positive)
    reset_after: float = attrs.field(default=30.0, validator=_positive)
    max_restarts: int = attrs.field(default=5, validator=attrs.validators.ge(0))
    restart_window: float = attrs.field(default=60.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.multiplier < 1:
            raise ValueError(f"RestartPolicy.multiplier must be >= 1, got {self.multiplier!r}")
        if self.max_delay < self.initial_delay:
            raise ValueError("RestartPolicy.max_delay must be >= initial_delay")

    def ceiling(self, attempt: int) -> float:
        """The longest wait for 0-based ``attempt``: the un-jittered capped exponential."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        try:
            return min(self.max_delay, self.initial_delay * self.multiplier**attempt)
        except OverflowError:  # a float power past ~1e308; the cap was reached long before
            return self.max_delay

    def delay(self, attempt: int, rng: random.Random) -> float:
        """A full-jitter wait for ``attempt``: uniform in ``[0, ceiling(attempt)]``."""
        return rng.uniform(0.0, self.ceiling(attempt))
