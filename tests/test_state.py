from __future__ import annotations

from pathlib import Path

from runtime.lowlevel import LocalCopy, state_dir


def test_an_explicit_state_dir_wins() -> None:
    assert state_dir({"PIPHI_STATE_DIR": "/data/state", "PIPHI_CONTAINER_ID": "c"}) == Path(
        "/data/state"
    )


def test_the_default_is_scoped_by_container_id() -> None:
    env = {"XDG_STATE_HOME": "/xdg", "PIPHI_CONTAINER_ID": "c-42"}
    assert state_dir(env) == Path("/xdg/piphi-runtime/c-42")
    assert state_dir({"HOME": "/home/u"}) == Path("/home/u/.local/state/piphi-runtime/default")


def test_a_hostile_container_id_stays_one_path_component() -> None:
    assert state_dir({"XDG_STATE_HOME": "/x", "PIPHI_CONTAINER_ID": "../../etc"}) == Path(
        "/x/piphi-runtime/.._.._etc"
    )
    assert state_dir({"XDG_STATE_HOME": "/x", "PIPHI_CONTAINER_ID": ".."}) == Path(
        "/x/piphi-runtime/default"
    )


def test_the_local_snapshot_copy_lives_in_the_state_dir() -> None:
    assert LocalCopy.default({"PIPHI_STATE_DIR": "/s"}).path == Path("/s/snapshot.json")
