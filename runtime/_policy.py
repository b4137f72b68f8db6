"""Restart policy and bookkeeping: how long to wait before retrying, when to call an
actor failed, and the per-actor record (``RestartTracker``) those decisions are read from.

Both are plain objects with no trio in them: time is passed in, so they are tested
without an event loop.
"""

from __future__ import annotations

import random
from collections import deque

import attrs

__all__ = ["RestartPolicy", "RestartTracker"]


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


class RestartTracker:
    """One actor's restart bookkeeping under a ``RestartPolicy``: the attempt count that
    drives the backoff, the restarts inside the window, whether it is failed, and since
    when it has been healthy. Times are whatever clock the caller uses (the supervisor
    passes trio time); nothing here reads a clock.
    """

    __slots__ = (
        "_restarts",
        "attempt",
        "consecutive",
        "failed",
        "healthy_since",
        "last_error_key",
        "policy",
        "restarts_total",
    )

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.attempt = 0
        """0-based backoff attempt of the next retry."""
        self.failed = False
        """Past the restart intensity, until healthy for ``reset_after``."""
        self.healthy_since: float | None = None
        self.consecutive = 0
        """Failures of any kind since the last success."""
        self.restarts_total = 0
        self.last_error_key: tuple[str, str] | None = None
        """The last crash's (type, message), so a repeated crash is logged briefly."""
        self._restarts: deque[float] | None = None  # made on the first crash: most never do

    def succeeded(self, now: float) -> None:
        """The device answered: the failure streak ends, the healthy time starts."""
        self.consecutive = 0
        if self.healthy_since is None:
            self.healthy_since = now

    def healthy_from(self, now: float) -> None:
        """Count health from ``now`` whatever came before (a push actor's run() starting
        in a healthy state)."""
        self.healthy_since = now

    def missed(self) -> None:
        """One more failure that is not a restart (the device was offline)."""
        self.consecutive += 1

    def forget_if_healthy(self, now: float) -> None:
        """End the healthy stretch; if it lasted ``reset_after``, start over: first
        attempt, not failed, no restarts in the window."""
        since, self.healthy_since = self.healthy_since, None
        if since is not None and now - since >= self.policy.reset_after:
            self.attempt = 0
            self.failed = False
            self.last_error_key = None
            if self._restarts is not None:
                self._restarts.clear()

    def crashed(self, now: float) -> bool:
        """Count a restart at ``now``; return whether this one made the actor failed."""
        self.consecutive += 1
        self.restarts_total += 1
        self.forget_if_healthy(now)
        restarts = self._restarts
        if restarts is None:
            restarts = self._restarts = deque()
        restarts.append(now)
        window = self.policy.restart_window
        while now - restarts[0] > window:
            restarts.popleft()
        newly_failed = not self.failed and len(restarts) > self.policy.max_restarts
        self.failed = self.failed or newly_failed
        return newly_failed

    def repeated(self, key: tuple[str, str]) -> bool:
        """Whether the crash ``key`` is the same as the previous one; remembers it."""
        same = key == self.last_error_key
        self.last_error_key = key
        return same

    def next_delay(self, rng: random.Random) -> float:
        """How long to wait before the next retry, and one attempt more."""
        policy = self.policy
        if self.failed:
            # At the cap, jittered down by up to a fifth so actors that failed together
            # do not retry in lockstep.
            return policy.max_delay * rng.uniform(0.8, 1.0)
        delay = policy.delay(self.attempt, rng)
        self.attempt += 1
        return delay

    def restarts_in_window(self, now: float) -> int:
        window = self.policy.restart_window
        return sum(1 for t in self._restarts or () if now - t <= window)
