"""Settings: the defaults, PIXMILL_* variables over them, overrides over both, and the derived paths."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pixmill.config import Settings, load_settings

MiB = 1024 * 1024


def test_defaults_without_any_variable():
    settings = load_settings({})
    assert settings == Settings()
    assert (settings.engine, settings.host, settings.port) == ("mpi", "127.0.0.1", 5000)
    assert settings.data_dir == Path("pixmill-data")
    assert (settings.max_pixels, settings.max_files) == (100_000_000, 100)
    assert (settings.max_file_bytes, settings.max_request_bytes) == (50 * MiB, 500 * MiB)
    assert (settings.task_timeout, settings.max_attempts, settings.lease_seconds) == (60.0, 3, 30.0)
    assert settings.api_tokens == () and settings.workers == 0


def test_settings_are_frozen_and_keyword_only():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        Settings(Path("x"))  # type: ignore[misc]


@pytest.mark.parametrize(("variable", "raw", "field", "value"), [
    ("PIXMILL_PORT", "8080", "port", 8080),
    ("PIXMILL_WORKERS", " 4 ", "workers", 4),
    ("PIXMILL_MAX_FILE_BYTES", "1048576", "max_file_bytes", MiB),
    ("PIXMILL_TASK_TIMEOUT", "2.5", "task_timeout", 2.5),
    ("PIXMILL_LEASE_SECONDS", "600", "lease_seconds", 600.0),
    ("PIXMILL_DATA_DIR", "/srv/pixmill", "data_dir", Path("/srv/pixmill")),
    ("PIXMILL_ENGINE", "local", "engine", "local"),
    ("PIXMILL_HOST", "0.0.0.0", "host", "0.0.0.0"),
    ("PIXMILL_API_TOKENS", "alpha, beta ,,gamma,", "api_tokens", ("alpha", "beta", "gamma")),
    ("PIXMILL_API_TOKENS", "", "api_tokens", ()),
])
def test_a_variable_overrides_its_default_with_the_field_type(variable, raw, field, value):
    settings = load_settings({variable: raw})
    assert getattr(settings, field) == value
    assert type(getattr(settings, field)) is type(value)
    others = {f.name for f in dataclasses.fields(Settings)} - {field}
    assert all(getattr(settings, name) == getattr(Settings(), name) for name in others)


@pytest.mark.parametrize("field", [f for f in dataclasses.fields(Settings) if f.name != "api_tokens"],
                         ids=lambda f: f.name)
def test_every_setting_reads_back_its_default_written_as_text(field):
    # What the supervisor hands its dispatcher child: each value as text, which must parse to the same value.
    from pixmill.worker.supervisor import settings_environment

    default, name = getattr(Settings(), field.name), f"PIXMILL_{field.name.upper()}"
    settings = load_settings({name: settings_environment(Settings())[name]})
    expected = default.resolve() if isinstance(default, Path) else default   # the child may run elsewhere
    assert getattr(settings, field.name) == expected and type(getattr(settings, field.name)) is type(default)


def test_variables_of_other_programs_and_unknown_pixmill_names_are_ignored():
    assert load_settings({"PORT": "1", "PIXMILL_NOPE": "1", "pixmill_port": "2"}) == Settings()


def test_the_process_environment_is_read_when_none_is_given(monkeypatch):
    monkeypatch.setenv("PIXMILL_MAX_FILES", "7")
    assert load_settings().max_files == 7


def test_overrides_win_over_variables_and_none_is_ignored(tmp_path):
    environ = {"PIXMILL_PORT": "8080", "PIXMILL_WORKERS": "4", "PIXMILL_DATA_DIR": "/from/env"}
    settings = load_settings(environ, port=9000, workers=None, data_dir=tmp_path, engine=None)
    assert (settings.port, settings.workers, settings.data_dir, settings.engine) == (9000, 4, tmp_path, "mpi")


def test_with_overrides_copies_and_ignores_none():
    base = Settings(port=1234)
    changed = base.with_overrides(port=None, max_files=9)
    assert (changed.port, changed.max_files) == (1234, 9)
    assert base.max_files == 100                      # the original is untouched
    assert base.with_overrides() == base


def test_an_override_of_an_unknown_setting_is_refused():
    with pytest.raises(TypeError, match="no_such_setting"):
        load_settings({}, no_such_setting=1)


@pytest.mark.parametrize(("variable", "raw", "kind"), [
    ("PIXMILL_PORT", "http", "int"),
    ("PIXMILL_WORKERS", "2.5", "int"),
    ("PIXMILL_MAX_FILES", "", "int"),
    ("PIXMILL_TASK_TIMEOUT", "soon", "float"),
    ("PIXMILL_LEASE_SECONDS", "1,5", "float"),
])
def test_a_bad_value_names_the_variable_the_type_and_the_value(variable, raw, kind):
    with pytest.raises(ValueError) as caught:
        load_settings({variable: raw})
    message = str(caught.value)
    assert variable in message and kind in message and repr(raw) in message


@pytest.mark.parametrize(("workers", "cores", "expected"), [(3, 16, 3), (1, 2, 1), (0, 6, 6), (0, None, 1)])
def test_worker_count_is_the_setting_or_one_per_core(monkeypatch, workers, cores, expected):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert Settings(workers=workers).worker_count() == expected


def test_the_database_and_the_blobs_live_under_the_data_dir(tmp_path):
    settings = load_settings({"PIXMILL_DATA_DIR": str(tmp_path / "d")})
    assert settings.db_path == tmp_path / "d" / "pixmill.db"
    assert settings.blob_dir == tmp_path / "d" / "blobs"
    moved = settings.with_overrides(data_dir=tmp_path / "e")
    assert moved.db_path.parent == moved.blob_dir.parent == tmp_path / "e"
