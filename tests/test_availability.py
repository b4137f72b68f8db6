"""Availability decided by the right thing (issue 13 §1), on trio's virtual clock.

A device that produces no data is unavailable, whatever the cause, and Core hears it once
per outage: one ``device.unavailable`` (with a reason, the last error and its hint) and
one ``device.available`` when data flows again.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from typing import Any

import pytest
import trio
from pydantic import Field

from runtime import (
    ActorState,
    DeviceActor,
    DeviceUnavailable,
    Integration,
    Reading,
    ReconfigurationRequired,
    RuntimeConfig,
    command,
)
from runtime._health import fleet_concerns
from runtime.devcore import DevCore
from runtime.lowlevel import (
    ActorCrashed,
    ActorNotReady,
    ActorNursery,
    ConfigSync,
    open_actor_nursery,
)
from runtime.testing import RecordingSink, config_payload

from .helpers import Probe, ProbeConfig, TopRandom, attempt, wait_until

OUTAGE = ["device.unavailable", "device.available"]


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in itertools.pairwise(times)]


# -- a report() inside poll() is no proof of life ------------------------------------------


class Heartbeat(Probe):
    """Reports a ``connected`` heartbeat at the start of every poll, then acts out the
    script: a vendor API that says "not connected" and then fails the read."""

    async def poll(self) -> list[Reading]:
        n = len(self.times("poll"))
        script = self.config.polls
        step = script[n] if n < len(script) else self.config.then
        self.report([Reading("connected", step != "down")])
        return await super().poll()


@pytest.mark.parametrize("actor", [Probe, Heartbeat], ids=["quiet", "reports-in-poll"])
async def test_a_poll_actor_gives_one_event_pair_per_outage_whatever_it_reports(
    actors: ActorNursery, autojump_clock: Any, sink: RecordingSink, actor: type[Probe]
) -> None:
    script = ["ok"] * 3 + ["down"] * 5 + ["ok"] * 3 + ["down"] * 2 + ["ok"] * 2
    sup = actors.spawn(actor, {"id": "p", "polls": script})
    await wait_until(lambda: len(sup.actor.times("poll")) > len(script))
    assert sink.event_types("p") == OUTAGE * 2
    assert sup.health().available and sup.health().availability_reason is None


class GateConfig(RuntimeConfig):
    outages: list[int] = Field(default_factory=list)  # run() attempts that fail at once


class Gate(DeviceActor[GateConfig]):
    """A push device: run() reports every second; the first run() ends in an outage after
    three reports, and the attempts listed in ``outages`` fail at once. Its ``status``
    command reports a heartbeat of its own."""

    def __init__(self, config: GateConfig) -> None:
        super().__init__(config)
        self.runs = 0

    async def run(self) -> None:
        attempt, self.runs = self.runs, self.runs + 1
        if attempt in self.config.outages:
            raise DeviceUnavailable("gateway offline")
        for n in itertools.count():
            await trio.sleep(1)
            self.report([Reading("uptime_s", n)])
            if attempt == 0 and n == 2:
                raise DeviceUnavailable("gateway dropped the stream")

    @command("status")
    async def status(self, args: Mapping[str, Any]) -> dict[str, bool]:
        self.report([Reading("connected", False)])
        return {"connected": False}


def uptimes(sink: RecordingSink) -> list[Any]:
    return [t for t in sink.telemetry_for("gw") if t.readings[0].metric == "uptime_s"]


@pytest.mark.parametrize("reports", [False, True], ids=["quiet", "reports-in-outage"])
async def test_a_push_actor_gives_one_event_pair_per_outage_whatever_is_reported_meanwhile(
    autojump_clock: Any, reports: bool
) -> None:
    sink = RecordingSink()
    async with open_actor_nursery(sink, rng=TopRandom()) as actors:
        sup = actors.spawn(Gate, {"id": "gw", "outages": [1, 2, 3, 4]})
        await wait_until(lambda: sup.state is ActorState.UNAVAILABLE)
        while sup.actor.runs < 5:  # the outage: retries at 1, 2, 4 and 8 s
            if reports:
                assert await sup.command("status") == {"connected": False}
            await trio.sleep(0.25)
        await wait_until(lambda: len(uptimes(sink)) >= 10)
    assert sink.event_types("gw") == OUTAGE


# -- a crash-looping device is unavailable, and failed is said once ---------------------------


async def test_a_crash_looping_poll_is_unavailable_then_failed_then_available_once_each(
    actors: ActorNursery, autojump_clock: Any, sink: RecordingSink
) -> None:
    sup = actors.spawn(Probe, {"id": "p", "polls": ["ok"] * 2 + ["crash"] * 8})
    await wait_until(lambda: sink.events("device.unavailable"))
    (gone,) = sink.events("device.unavailable")
    assert gone.severity == "warning"
    assert {k: gone.data[k] for k in ("reason", "message", "code", "hint", "phase")} == {
        "reason": "crashing",
        "message": "poll #2: boom",
        "code": "actor_exception",
        "hint": ActorCrashed.default_hint,
        "phase": "poll",
    }
    health = sup.health()
    assert (health.available, health.availability_reason) == (False, "crashing")

    await wait_until(lambda: sink.events("device.failed"))
    (failed,) = sink.events("device.failed")
    assert failed.severity == "error" and failed.data["code"] == "actor_exception"
    assert failed.data["restarts_in_window"] == 6
    assert sup.health().availability_reason == "failed"
    assert sup.health().to_dict()["availability_reason"] == "failed"

    await wait_until(lambda: sink.events("device.available"))
    assert sink.event_types("p") == ["device.unavailable", "device.failed", "device.available"]
    assert sup.health().available and sup.health().availability_reason is None


async def test_a_setup_that_keeps_crashing_is_unavailable_from_the_first_crash(
    actors: ActorNursery, autojump_clock: Any, sink: RecordingSink
) -> None:
    sup = actors.spawn(Probe, {"id": "p", "setups": ["crash"] * 3})
    await wait_until(lambda: sup.state is ActorState.BACKOFF)
    (gone,) = sink.events("device.unavailable")
    assert (gone.data["reason"], gone.data["phase"]) == ("crashing", "setup")
    assert not sup.health().available
    await wait_until(lambda: sup.actor.times("poll"))
    assert sink.event_types("p") == OUTAGE


async def test_an_outage_that_turns_into_crashes_is_still_one_outage(
    actors: ActorNursery, autojump_clock: Any, sink: RecordingSink
) -> None:
    sup = actors.spawn(Probe, {"id": "p", "polls": ["ok", "down", "down", "crash", "crash"]})
    await wait_until(lambda: len(sup.actor.times("poll")) >= 7)
    assert sink.event_types("p") == OUTAGE
    assert sink.events("device.unavailable")[0].data["reason"] == "offline"


async def test_a_push_actor_whose_run_keeps_crashing_is_unavailable_until_it_reports(
    autojump_clock: Any,
) -> None:
    class Broken(Gate):
        async def run(self) -> None:
            self.runs += 1
            if self.runs <= 3:
                raise RuntimeError("stream handshake failed")
            await super().run()

    sink = RecordingSink()
    async with open_actor_nursery(sink, rng=TopRandom()) as actors:
        sup = actors.spawn(Broken, {"id": "gw", "outages": []})
        await wait_until(lambda: sup.state is ActorState.BACKOFF)
        assert sup.health().availability_reason == "crashing"
        await wait_until(lambda: sink.telemetry_for("gw"))
    assert sink.event_types("gw") == OUTAGE


# -- credentials and configuration errors -----------------------------------------------------


class LockConfig(ProbeConfig):
    password: str = "wrong"


class Lock(Probe):
    """Refuses its password in setup() (or, with ``polls`` scripted, later) until the
    config carries the right one."""

    config_model = LockConfig

    async def setup(self) -> None:
        await super().setup()
        self._check()

    async def poll(self) -> list[Reading]:
        readings = await super().poll()
        if len(self.times("poll")) > 2:
            self._check()
        return readings

    def _check(self) -> None:
        if getattr(self.config, "password", None) != "right":
            raise ReconfigurationRequired(
                "the device refused the password",
                reason="auth_rejected",
                hint="Set the device's password in PiPhi.",
            )


async def test_a_refused_configuration_is_told_once_and_probed_slowly(
    actors: ActorNursery, autojump_clock: Any, sink: RecordingSink
) -> None:
    sup = actors.spawn(Lock, {"id": "lock"})
    await wait_until(lambda: sup.state is ActorState.NEEDS_RECONFIGURATION)
    await trio.sleep(3600 + 1)
    setups = sup.actor.times("setup")
    assert gaps(setups) == pytest.approx([900.0] * 4, abs=0.006), "a probe every 15 minutes"
    assert sup.state is ActorState.NEEDS_RECONFIGURATION
    assert sink.event_types("lock") == ["device.unavailable", "device.needs_reconfiguration"]
    gone, told = sink.events(device_id="lock")
    assert (gone.severity, gone.data["reason"]) == ("error", "needs_reconfiguration")
    assert told.severity == "error"
    assert {k: told.data[k] for k in ("reason", "message", "code", "hint", "phase")} == {
        "reason": "auth_rejected",
        "message": "the device refused the password",
        "code": "reconfiguration_required",
        "hint": "Set the device's password in PiPhi.",
        "phase": "setup",
    }
    health = sup.health()
    assert (health.available, health.availability_reason) == (False, "needs_reconfiguration")
    assert health.restarts_total == 0, "a refused config is not a crash"
    assert health.last_error is not None and health.last_error.hint.startswith("Set the")
    refused = await attempt(sup.command("echo"))
    assert isinstance(refused, ActorNotReady) and refused.hint.startswith("Set the")


async def test_the_probe_interval_is_the_actor_class_s_to_choose(
    actors: ActorNursery, autojump_clock: Any
) -> None:
    class Impatient(Lock):
        reconfigure_probe_interval = 60.0

    sup = actors.spawn(Impatient, {"id": "lock"})
    await wait_until(lambda: len(sup.actor.times("setup")) == 4)
    assert gaps(sup.actor.times("setup")) == pytest.approx([60.0] * 3, abs=0.006)


async def test_a_refusal_during_polling_releases_the_session(
    actors: ActorNursery, autojump_clock: Any, sink: RecordingSink
) -> None:
    sup = actors.spawn(Lock, {"id": "lock", "password": "right"})
    await wait_until(lambda: sup.actor.times("poll"))
    sup.actor.config = LockConfig(id="lock", password="rotated")  # the device side changed
    await wait_until(lambda: sup.state is ActorState.NEEDS_RECONFIGURATION)
    assert [h for h, _ in sup.actor.calls][-2:] == ["poll", "teardown"]
    assert sink.event_types("lock") == ["device.unavailable", "device.needs_reconfiguration"]
    assert sink.events("device.needs_reconfiguration")[0].data["phase"] == "poll"


class ReconfigurableLock(Lock):
    async def reconfigure(self, config: LockConfig) -> None:
        self.calls.append(("reconfigure", trio.current_time()))


@pytest.mark.parametrize(
    ("actor", "how"), [(Lock, "restarted"), (ReconfigurableLock, "reconfigured")]
)
async def test_a_changed_config_is_tried_at_once(
    autojump_clock: Any, actor: type[Lock], how: str
) -> None:
    sink = RecordingSink()
    async with open_actor_nursery(sink, rng=random.Random(5)) as actors:
        sync = ConfigSync(actors, actor, sink)
        await sync.apply_snapshot({"generation": 1, "configs": [{"id": "lock"}]})
        first = actors.get("lock")
        assert first is not None
        await wait_until(lambda: first.state is ActorState.NEEDS_RECONFIGURATION)
        await trio.sleep(60)
        changed = await sync.apply_snapshot(
            {"generation": 2, "configs": [{"id": "lock", "password": "right"}]}
        )
        assert getattr(changed, how) == ("lock",)
        sent_at = trio.current_time()
        sup = actors.get("lock")
        assert sup is not None
        await wait_until(lambda: sup.actor.times("poll"), step=0.001)
        assert sup.actor.times("setup")[-1] - sent_at < 0.01, "not at the next probe"
        assert sup.state is ActorState.RUNNING
        await wait_until(lambda: sink.events("device.available"))
        hooks = [h for h, _ in sup.actor.calls]
        assert "reconfigure" not in hooks, "no session to hand the config to"
    sync_events = {"device.configured", "device.reconfigured"}  # the reconciler's own
    assert [e for e in sink.event_types("lock") if e not in sync_events] == [
        "device.unavailable",
        "device.needs_reconfiguration",
        "device.available",
    ]


async def test_a_changed_config_that_is_refused_too_is_told_again(
    actors: ActorNursery, autojump_clock: Any, sink: RecordingSink
) -> None:
    sup = actors.spawn(ReconfigurableLock, {"id": "lock"})
    await wait_until(lambda: sup.state is ActorState.NEEDS_RECONFIGURATION)
    await sup.reconfigure(LockConfig(id="lock", password="still wrong"))
    await wait_until(lambda: len(sup.actor.times("setup")) == 2)
    await wait_until(lambda: sup.state is ActorState.NEEDS_RECONFIGURATION)
    assert sink.event_types("lock") == [
        "device.unavailable",
        "device.needs_reconfiguration",
        "device.needs_reconfiguration",
    ]


# -- /health: ok only while every device runs -------------------------------------------------


def test_the_fleet_is_ok_only_while_every_device_runs() -> None:
    assert fleet_concerns({"running": 12}) == []
    assert fleet_concerns({"running": 3, "stopping": 1, "stopped": 2}) == []
    concerns = fleet_concerns(
        {"running": 3, "unavailable": 2, "backoff": 1, "failed": 1, "needs_reconfiguration": 4}
    )
    assert [(c.code, c.message.split(" device")[0]) for c in concerns] == [
        ("devices_unavailable", "2"),
        ("devices_backoff", "1"),
        ("devices_failed", "1"),
        ("devices_needs_reconfiguration", "4"),
    ]
    assert all(c.hint.endswith(".") for c in concerns)
    assert [c.code for c in fleet_concerns({"starting": 1})] == ["devices_starting"]


async def test_health_is_degraded_by_state_and_diagnostics_say_why(
    devcore: DevCore, run_integration: Any, autojump_clock: trio.abc.Clock
) -> None:
    integration = Integration(id="avail", name="Availability", version="1.0.0", actor=Lock)
    async with run_integration(integration) as rt:
        await rt.configure(
            config_payload("good", password="right"),
            config_payload("flaky", password="right", polls=["ok", "down", "down", "down"]),
            config_payload("locked"),
        )
        await trio.sleep(2.5)  # flaky is in its outage; locked waits for a new config
        health = (await rt.http.get("/health")).json()
        assert health["status"] == "degraded"
        concerns = {c["code"]: c["message"] for c in health["runtime"]["concerns"]}
        assert concerns == {
            "devices_unavailable": "1 device(s) offline or not answering in time, retried "
            "with backoff",
            "devices_needs_reconfiguration": "1 device(s) refusing their configuration and "
            "waiting for a changed one",
        }
        diagnostics = (await rt.http.get("/diagnostics")).json()["diagnostics"]
        actors = {a["config_id"]: a for a in diagnostics["actors"]}
        assert [
            (actors[i]["available"], actors[i]["availability_reason"]) for i in sorted(actors)
        ] == [
            (False, "offline"),
            (True, None),
            (False, "needs_reconfiguration"),
        ]
        assert actors["locked"]["last_error"]["hint"] == "Set the device's password in PiPhi."

        await devcore.put_config(config_payload("locked", password="right"))
        await devcore.push(rt.url)
        await trio.sleep(30)  # flaky's backoff is over; locked was retried at once
        health = (await rt.http.get("/health")).json()
        assert (health["status"], health["runtime"]["concerns"]) == ("ok", [])
    events = [(e["device_id"], e["type"]) for e in await devcore.events()]
    assert [
        t for d, t in events if d == "flaky" and t.startswith("device.") and "avail" in t
    ] == OUTAGE
