"""What each public namespace exports: pinned, so a change to the public API is a choice."""

from __future__ import annotations

import runtime
import runtime.delivery
import runtime.lowlevel
import runtime.testing

AUTHORING = {
    "ActorHealth", "ActorState", "Capability", "ChildView", "CommandContext", "DeviceActor",
    "DeviceIdentity", "DeviceUnavailable", "Integration", "InvalidActor", "InvalidConfig",
    "InvalidEvent", "InvalidReading", "MAX_PAYLOAD_BYTES", "MIN_POLL_INTERVAL", "MqttSource",
    "PiPhiError", "PollInterval", "Reading", "ReconfigurationRequired", "RestartPolicy",
    "RuntimeConfig", "Severity", "SourcePacket", "__version__", "command", "entity",
}  # fmt: skip

LOWLEVEL = {
    "ActorBusy", "ActorCallError", "ActorCrashed", "ActorNotAttached", "ActorNotReady",
    "ActorNursery", "ActorStopped", "ApplyResult", "CallFailed", "CallTimeout", "CommandSpec",
    "ConfigSnapshot", "ConfigSync", "DeviceSlice", "ErrorRecord", "EventRecord",
    "IllegalTransition", "LocalCopy", "MemoryMonitor", "PollTimeout", "Refresh",
    "RefreshUnsupported", "Registry", "RehydrationReport", "Rejection", "RemoveResult", "Settings",
    "Runtime", "Sink", "Source", "SourceHub", "SourceInbox", "SourceReport", "Supervisor",
    "SyncResult", "TeardownTimeout", "TelemetryRecord", "UnknownCommand", "build_app",
    "can_transition", "mounted_snapshot_path", "open_actor_nursery", "open_runtime",
    "open_sources", "rehydrate",
    "select_by_field", "serve", "state_dir",
}  # fmt: skip

DELIVERY = {
    "CoreAuthRejected", "CoreClient", "CoreError", "CoreIdentityUnknown",
    "CorePayloadTooLarge", "CoreRejected", "CoreRouteNotFound", "CoreServerError",
    "CoreTimeout", "CoreUnavailable", "CoreUnexpectedResponse", "LinkStatus", "Outbox",
    "OutboxSettings", "OutboxStats", "Recovery", "SpoolBusy", "SpoolCorrupt", "SpoolError",
    "SpoolFull", "SpoolIOError", "open_outbox",
}  # fmt: skip


def test_each_namespace_exports_exactly_its_names() -> None:
    assert set(runtime.__all__) == AUTHORING
    assert set(runtime.lowlevel.__all__) == LOWLEVEL
    assert set(runtime.delivery.__all__) == DELIVERY
    for namespace in (runtime, runtime.lowlevel, runtime.delivery, runtime.testing):
        for name in namespace.__all__:
            assert hasattr(namespace, name), (namespace.__name__, name)


def test_the_machinery_is_not_in_the_authors_namespace() -> None:
    for name in (
        "Supervisor", "Registry", "Runtime", "Outbox", "CoreClient", "ConfigSync", "SourceHub",
    ):  # fmt: skip
        assert not hasattr(runtime, name), name
