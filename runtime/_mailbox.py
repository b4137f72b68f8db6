"""An actor's mailbox: the commands, refreshes and reconfigurations waiting for its task.

Callers never run anything on the actor themselves: they queue a ``Call`` and wait for
its reply, and the actor's own task runs it between its scheduled actions. That is what
serializes calls with polls without a lock. The mailbox is bounded (``MAILBOX_SIZE``)
and every call carries a deadline the actor knows, so a call that expired while queued
is answered without running and a reply can say whether the call had started.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import httpx
import trio

from ._errors import (
    ActorBusy,
    ActorCallError,
    CallFailed,
    CallTimeout,
    PiPhiError,
    error_code,
    error_message,
    errors_beside_cancellation,
)
from ._scheduler import Doorbell

__all__ = ["MAILBOX_SIZE", "Call", "Mailbox", "MailboxOwner", "cut_off"]

#: Requests (commands, refreshes) that may wait for one actor; more are refused at once.
MAILBOX_SIZE = 16
#: How long a caller waits past its deadline for the actor's own timeout reply.
REPLY_SLACK = 1.0


@attrs.define(eq=False)
class Call:
    """A request waiting in an actor's mailbox, with the slot its reply goes into."""

    what: str
    run: Callable[[], Awaitable[Any]]
    deadline: float
    done: trio.Event = attrs.field(factory=trio.Event)
    value: Any = None
    error: PiPhiError | None = None
    started: bool = False  # the actor began running it: it may have reached the device
    abandoned: bool = False

    def reply(self, value: Any = None, error: PiPhiError | None = None) -> None:
        self.value, self.error = value, error
        self.done.set()


class MailboxOwner(Protocol):
    """What serving the mailbox needs to know about the actor it belongs to."""

    @property
    def next_due(self) -> float:
        """trio time of the actor's own next action (setup, poll or run)."""
        ...

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]: ...

    def refusal(self, what: str) -> ActorCallError | None:
        """Why ``what`` cannot run now (no live session), or None if it can."""
        ...

    def interruption(self, what: str) -> ActorCallError:
        """The answer for ``what`` when the actor's task is interrupted while running it."""
        ...


class Mailbox:
    """A bounded queue of calls for one actor; rings ``bell`` when one arrives."""

    __slots__ = ("_bell", "_calls")

    def __init__(self, bell: Doorbell) -> None:
        self._bell = bell
        self._calls: deque[Call] = deque()

    def __bool__(self) -> bool:
        return bool(self._calls)

    async def call(
        self,
        what: str,
        run: Callable[[], Awaitable[Any]],
        timeout: float,  # noqa: ASYNC109 - see below
    ) -> Any:
        """Queue ``run`` for the actor and return its result, or raise its error.

        A deadline the actor knows, rather than a caller's cancel scope: the actor skips
        calls that expired while queued, and a reply can say whether the call started.
        """
        calls = self._calls
        if len(calls) >= MAILBOX_SIZE and any(c.abandoned for c in calls):
            # Callers that gave up must not keep new ones out.
            calls = self._calls = deque(c for c in calls if not c.abandoned)
        if len(calls) >= MAILBOX_SIZE:
            raise ActorBusy(f"{what} refused: {MAILBOX_SIZE} requests are already waiting")
        call = Call(what, run, trio.current_time() + timeout)
        calls.append(call)
        self._bell.ring()
        try:
            # The actor enforces the deadline itself and replies; the slack only guards
            # against an actor that cannot be interrupted.
            with trio.move_on_at(call.deadline + REPLY_SLACK):
                await call.done.wait()
        finally:
            if not call.done.is_set():
                call.abandoned = True
        if not call.done.is_set():
            raise CallTimeout(
                f"{what}: no reply within {timeout:g} s", details={"started": call.started}
            )
        if call.error is not None:
            raise call.error
        return call.value

    async def serve(self, owner: MailboxOwner, *, until_due: bool = True) -> None:
        """Answer the calls queued now. With ``until_due``, stop as soon as the actor's
        own next action is due: a steady stream of calls must not starve its schedule."""
        calls = self._calls
        for _ in range(len(calls)):
            if not calls or (until_due and trio.current_time() >= owner.next_due):
                return
            call = calls.popleft()
            if call.abandoned:
                continue
            if trio.current_time() >= call.deadline:
                call.reply(
                    error=CallTimeout(
                        f"{call.what} expired in the queue", details={"started": False}
                    )
                )
                continue
            refusal = owner.refusal(call.what)
            if refusal is not None:
                call.reply(error=refusal)
                continue
            await _execute(owner, call)

    def close(self, why: Callable[[str], PiPhiError]) -> None:
        """Answer every call still waiting with ``why(call.what)``; the actor has stopped."""
        for call in self._calls:
            if not call.done.is_set():
                call.reply(error=why(call.what))
        self._calls.clear()


async def _execute(owner: MailboxOwner, call: Call) -> None:
    call.started = True
    try:
        with trio.move_on_at(call.deadline) as scope:
            try:
                value = await call.run()
            except ActorCallError as exc:
                call.reply(error=exc)
                return
            except (Exception, BaseExceptionGroup) as raised:
                cause = (
                    raised if isinstance(raised, Exception) else errors_beside_cancellation(raised)
                )
                details: dict[str, Any] = {"cause": error_code(cause)}
                if cut_off(cause):
                    details["may_have_run"] = True
                failure = CallFailed(f"{call.what} failed: {error_message(cause)}", details=details)
                failure.__cause__ = cause
                owner.log.warning("%s failed: %s", call.what, cause)
                call.reply(error=failure)
                return
    except BaseException:
        # Interrupted by stop(), or by a push actor's run() ending: this call already
        # left the mailbox, so answer it here before unwinding.
        call.reply(error=owner.interruption(call.what))
        raise
    if scope.cancelled_caught:
        call.reply(
            error=CallTimeout(f"{call.what} timed out while running", details={"started": True})
        )
    else:
        call.reply(value)


#: Errors that say the exchange with the device never began: nothing reached it.
_NEVER_SENT = (
    ConnectionRefusedError,
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.LocalProtocolError,
    httpx.UnsupportedProtocol,
)
#: Errors that cut an exchange short once it may have begun: a connection lost or reset,
#: a read or write that timed out, the handler's own deadline.
_CUT_OFF = (
    ConnectionError,
    TimeoutError,
    trio.BrokenResourceError,
    trio.TooSlowError,
    httpx.TransportError,
)


def cut_off(error: BaseException) -> bool:
    """Whether a handler's error means its exchange with the device was cut short after
    the request may have reached it (so the command may have run), looking through the
    chain of explicit causes (``raise DeviceUnavailable(...) from exc``) and the members
    of a group. A refused or failed connect never reached it."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 8:
        if isinstance(current, BaseExceptionGroup):
            return any(cut_off(member) for member in current.exceptions)
        if isinstance(current, _NEVER_SENT):
            return False
        if isinstance(current, _CUT_OFF):
            return True
        current, seen = current.__cause__, seen + 1
    return False
