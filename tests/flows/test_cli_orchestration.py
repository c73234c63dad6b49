"""The orchestration commands of the ``emseg`` CLI (no server started)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.cli import app


def test_commands_are_listed():
    out = CliRunner().invoke(app, ["--help"]).output
    for command in ("demo", "pipeline", "nightly", "setup"):
        assert command in out


def test_setup_refuses_to_run_without_a_server():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: None}):
        result = CliRunner().invoke(app, ["setup"])
    assert result.exit_code != 0
    assert "PREFECT_API_URL is not set" in str(result.exception)


def test_pipeline_rejects_bad_params_before_any_work(tmp_path):
    result = CliRunner().invoke(app, ["pipeline", '{"source": "/nowhere.tif", "labels": "/nowhere.tif", '
                                      f'"workspace": "{tmp_path / "ws"}"}}'])
    assert result.exit_code != 0
    assert "source" in str(result.exception) and "no file or folder" in str(result.exception)
    assert not (tmp_path / "ws").exists()


def test_console_entry_point_reports_user_errors_in_one_line(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    params = f'{{"source": "/nowhere.tif", "labels": "/nowhere.tif", "workspace": "{tmp_path / "ws"}"}}'
    monkeypatch.setattr("sys.argv", ["emseg", "pipeline", params])
    monkeypatch.delenv("EMSEG_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("emseg: error: ValidationError") and "no file or folder at '/nowhere.tif'" in err
    assert "Traceback" not in err
