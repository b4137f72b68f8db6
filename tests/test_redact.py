"""Redaction rules: secret names, URL credentials, per-runtime value sets without a cap."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runtime._redact import MASK, SecretValues, is_secret_key, redact, redact_text


@pytest.fixture
def values() -> Iterator[SecretValues]:
    live = SecretValues().open()
    yield live
    live.close()


@pytest.mark.parametrize(
    "key",
    ["password", "apiKey", "api_key", "X-Api-Key", "client_secret", "accessToken", "pwd",
     "wifi_pwd", "passphrase", "pin", "wifiPin", "pin_code", "auth", "basic_auth", "Authorization",
     "credentials", "passwd"],
)  # fmt: skip
def test_secret_names(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["mapping", "author", "spinner", "host", "shipping", "opinion"])
def test_names_that_only_contain_a_short_secret_word_are_not_secret(key: str) -> None:
    assert not is_secret_key(key)


def test_a_url_password_with_an_at_sign_is_masked_whole(values: SecretValues) -> None:
    url = "http://admin:se@cret@nas.local/api"
    assert redact_text(url) == "http://***@nas.local/api"
    values.collect({"url": url})
    assert redact_text("the password is se@cret") == f"the password is {MASK}"


def test_there_is_no_cap_and_thousands_of_secrets_are_scrubbed(values: SecretValues) -> None:
    secrets = [f"pw-{n:05d}-x" for n in range(5_000)]
    for secret in secrets:
        values.add(secret)
    assert len(values) == 5_000
    line = " ".join(secrets[::997])
    assert redact_text(line) == " ".join([MASK] * len(secrets[::997]))


def test_short_secrets_are_masked_as_whole_tokens(values: SecretValues) -> None:
    values.collect({"pin": "42", "pwd": "abc"})
    assert redact_text("pin 42, code abc.") == f"pin {MASK}, code {MASK}."
    assert redact_text("port 8042, cabcd") == "port 8042, cabcd"


def test_overlapping_secrets_mask_the_longest(values: SecretValues) -> None:
    values.add("hunter2")
    values.add("hunter2-admin")
    assert redact_text("x hunter2-admin y hunter2 z") == f"x {MASK} y {MASK} z"


def test_two_runtimes_neither_share_nor_clear_each_others_secrets() -> None:
    first, second = SecretValues().open(), SecretValues().open()
    first.add("first-secret")
    second.add("second-secret")
    assert len(first) == len(second) == 1
    first.close()
    assert redact_text("first-secret second-secret") == f"first-secret {MASK}"
    second.close()
    assert redact_text("second-secret") == "second-secret"


def test_answers_mask_by_key_without_remembering(values: SecretValues) -> None:
    assert redact({"inputs": {"password": "tmp-pass", "host": "h"}}) == {
        "inputs": {"password": MASK, "host": "h"}
    }
    assert len(values) == 0, "a request's secrets are masked, not remembered"
