"""Settings: arguments win over the environment, which wins over the defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_durable import Settings
from celery_durable.errors import ConfigurationError


def test_default_is_a_sqlite_file_in_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.load(environ={})
    assert settings.database_url == f"sqlite:///{tmp_path / 'celery_durable.sqlite3'}"


def test_a_database_url_nobody_chose_is_the_default_database() -> None:
    assert Settings.load(environ={}).default_database
    assert Settings.load({"database_url": None}, environ={}).default_database
    chosen = {"CELERY_DURABLE_DATABASE_URL": "sqlite:////srv/durable.sqlite3"}
    assert not Settings.load(environ=chosen).default_database
    assert not Settings.load({"database_url": "sqlite:///x.sqlite3"}, environ={}).default_database


def test_environment_then_arguments() -> None:
    env = {
        "CELERY_DURABLE_DATABASE_URL": "postgresql://u@h/db",
        "CELERY_DURABLE_STALE_AFTER": "12.5",
    }
    settings = Settings.load(environ=env)
    assert settings.database_url == "postgresql+psycopg://u@h/db"
    assert settings.stale_after == 12.5
    assert Settings.load({"stale_after": 3}, environ=env).stale_after == 3


def test_bad_values_name_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="CELERY_DURABLE_"):
        Settings.load(environ={"CELERY_DURABLE_MAX_REDELIVERIES": "zero"})
    with pytest.raises(ConfigurationError, match="sqlite"):
        Settings.load({"database_url": "mysql://x"}, environ={})
    with pytest.raises(ConfigurationError):
        Settings.load({"no_such_setting": 1}, environ={})


def test_workers_keep_consuming_when_rabbitmq_times_a_delivery_out(sqlite_url: str) -> None:
    """A node past RabbitMQ's consumer_timeout closes the channel: the worker must reconnect,
    not shut down, and must not kill the node still running (test_consumer_timeout.py)."""
    from celery import Celery

    from celery_durable import Durable

    app = Celery("ct", broker="memory://")
    Durable(app, sqlite_url)
    assert app.conf.broker_channel_error_retry is True
    assert app.conf.worker_cancel_long_running_tasks_on_connection_loss is False
    chosen = Celery("ct2", broker="memory://")
    chosen.conf.worker_cancel_long_running_tasks_on_connection_loss = True
    Durable(chosen, sqlite_url)
    assert chosen.conf.worker_cancel_long_running_tasks_on_connection_loss is True  # kept


def test_every_setting_is_documented() -> None:
    """Every key is documented: the docstring under each field is its description (in the
    JSON schema, in an IDE); a field left without one, or docstrings no longer read, fail."""
    undocumented = [name for name, f in Settings.model_fields.items() if not f.description]
    assert undocumented == []
    assert Settings.model_fields["lease_ttl"].description == (
        "A lease not renewed for this long is expired."
    )
