"""Unit tests of the settings (scoreboard/settings.py): the environment read once, with casts.

Each test passes its environment as a mapping; only one reads ``os.environ``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from scoreboard.errors import ConfigError
from scoreboard.limits import Rate
from scoreboard.settings import Settings, load_settings


def test_settings_defaults() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.redis_url is None and settings.database_url is None
    assert settings.ingest_port == 8000 and settings.broadcaster_port == 8001
    assert settings.increment_rate == Rate(5, 60)
    assert settings.action_token_ttl_s == 60
    assert settings.trusted_proxies == ()
    assert settings.jwt_keys_path == Path(".local") / "keys" / "jwt"
    assert settings.action_keys_path == Path(".local") / "keys" / "action-token-keys"


def test_settings_parse_the_environment() -> None:
    settings = load_settings({
        "REDIS_URL": "redis://:hunter2@cache:6379/0",
        "DATABASE_URL": "postgresql://app:s3cret@db/app",
        "KEY_PREFIX": "prod-eu",
        "DATA_DIR": "/var/lib/sb",
        "INGEST_PORT": "9000",
        "MAX_POINTS_PER_INCREMENT": "50",
        "INCREMENT_RATE": "3/10",
        "IP_RATE": "100/1",
        "TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1 ,fd00::/8",
        "JWT_ISSUER": "issuer-x",
        "UNRELATED": "ignored",
    })
    assert settings.redis_url == "redis://:hunter2@cache:6379/0"
    assert settings.database_url == "postgresql://app:s3cret@db/app"
    assert settings.key_prefix == "prod-eu"
    assert settings.jwt_keys_path == Path("/var/lib/sb/keys/jwt")
    assert settings.ingest_port == 9000
    assert settings.max_points_per_increment == 50
    assert settings.increment_rate == Rate(3, 10)
    assert settings.ip_rate == Rate(100, 1)
    assert settings.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),
                                        ipaddress.ip_network("127.0.0.1/32"),
                                        ipaddress.ip_network("fd00::/8"))
    assert settings.jwt_issuer == "issuer-x"


def test_settings_empty_server_urls_mean_embedded() -> None:
    settings = load_settings({"REDIS_URL": "", "DATABASE_URL": ""})
    assert settings.redis_url is None and settings.database_url is None


def test_settings_host_bits_of_a_proxy_network_are_tolerated() -> None:
    settings = load_settings({"TRUSTED_PROXIES": "10.1.2.3/8"})
    assert settings.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)


def test_settings_read_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROADCASTER_PORT", "9123")
    assert load_settings().broadcaster_port == 9123


@pytest.mark.parametrize(("variable", "value"), [
    ("INGEST_PORT", "eighty"),
    ("INGEST_PORT", "70000"),
    ("BROADCASTER_PORT", "-1"),
    ("MAX_BODY_BYTES", "0"),
    ("MAX_POINTS_PER_INCREMENT", "-5"),
    ("MAX_BATCH_INCREMENTS", "1.5"),
    ("ACTION_TOKEN_TTL_S", "0"),
    ("ACCESS_TOKEN_TTL_S", ""),
    ("DEDUP_TTL_S", "0"),
    ("INCREMENT_RATE", "5 per minute"),
    ("IP_RATE", "0/60"),
    ("BACKEND_RATE", "10/0"),
    ("TRUSTED_PROXIES", "10.0.0.0/8, proxy.internal"),
    ("TRUSTED_PROXIES", "10.0.0.0/33"),
    ("KEY_PREFIX", ""),
    ("KEY_PREFIX", "a{b}"),
    ("KEY_PREFIX", "has space"),
    ("BOARD_RECONCILE_MINUTES", "61"),
    ("BOARD_RECONCILE_MINUTES", "-1"),
])
def test_settings_bad_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: value})
    assert caught.value.variable == variable
    assert variable in str(caught.value)


def test_settings_repr_hides_server_urls() -> None:
    settings = load_settings({"REDIS_URL": "redis://:hunter2@cache:6379/0",
                              "DATABASE_URL": "postgresql://app:s3cret@db/app"})
    text = repr(settings)
    assert "hunter2" not in text and "s3cret" not in text
    assert "redis_url" not in text and "database_url" not in text
    assert "key_prefix='sb'" in text  # the rest is shown


def test_settings_are_frozen() -> None:
    settings = load_settings({})
    with pytest.raises(AttributeError):
        settings.ingest_port = 1  # type: ignore[misc]


def test_board_reconcile_runs_every_n_minutes_from_the_hour_or_never() -> None:
    from workers.jobs import reconcile_minutes

    assert load_settings({}).board_reconcile_minutes == 15
    assert reconcile_minutes(15) == {0, 15, 30, 45}
    assert reconcile_minutes(60) == {0}
    assert reconcile_minutes(0) == set()
