"""Unit tests of password hashes (scoreboard/passwords.py): no servers.

scrypt runs with cheap parameters here (``CHEAP``); what is checked does not depend on them.
"""

from __future__ import annotations

import pytest

from scoreboard.passwords import hash_password, verify_password

CHEAP = {"n": 1024, "r": 8, "p": 1}


def test_password_hash_verifies() -> None:
    stored = hash_password("correct horse battery", **CHEAP)
    assert stored.startswith("scrypt$1024$8$1$")
    assert "correct horse" not in stored
    assert verify_password("correct horse battery", stored)


def test_password_hashes_are_salted() -> None:
    assert hash_password("same password", **CHEAP) != hash_password("same password", **CHEAP)


def test_wrong_password_is_refused() -> None:
    stored = hash_password("correct horse battery", **CHEAP)
    assert not verify_password("correct horse batterY", stored)
    assert not verify_password("", stored)


def test_unicode_password_round_trip() -> None:
    stored = hash_password("pässwörd ✓ 密码", **CHEAP)
    assert verify_password("pässwörd ✓ 密码", stored)
    assert not verify_password("passwort ✓ 密码", stored)


GOOD_HASH = hash_password("correct horse battery", **CHEAP)
_SCHEME, _N, _R, _P, _SALT, _DIGEST = GOOD_HASH.split("$")


@pytest.mark.parametrize("stored", [
    pytest.param("", id="empty"),
    pytest.param("plain-text-password", id="no-fields"),
    pytest.param("$".join(["bcrypt", _N, _R, _P, _SALT, _DIGEST]), id="other-scheme"),
    pytest.param("$".join([_SCHEME, "lots", _R, _P, _SALT, _DIGEST]), id="n-not-a-number"),
    pytest.param("$".join([_SCHEME, "1000", _R, _P, _SALT, _DIGEST]), id="n-not-power-of-two"),
    pytest.param("$".join([_SCHEME, _N, "0", _P, _SALT, _DIGEST]), id="r-zero"),
    pytest.param("$".join([_SCHEME, _N, _R, _P, "!!not base64!!", _DIGEST]), id="salt-garbage"),
    pytest.param("$".join([_SCHEME, _N, _R, _P, _SALT, "@@@"]), id="digest-garbage"),
    pytest.param("$".join([_SCHEME, _N, _R, _P, _SALT]), id="too-few-fields"),
    pytest.param(GOOD_HASH + "$extra", id="too-many-fields"),
])
def test_garbage_stored_hash_is_refused_without_raising(stored: str) -> None:
    assert verify_password("correct horse battery", GOOD_HASH)  # the baseline verifies
    assert not verify_password("correct horse battery", stored)
