"""Settings resolve from flags, then YUNKAI_NODE_* variables, then a TOML file, then defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import serving
from node import server


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    server.add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_beat_environment_beats_file_beats_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "yunkai.toml"
    config.write_text('[node]\nport = 7100\ndata_dir = "/from/file"\nbatch_events_max = 100\n')
    monkeypatch.setenv("YUNKAI_NODE_PORT", "7200")
    monkeypatch.setenv("YUNKAI_NODE_JOIN", "true")
    settings = serving.resolve(parse("--config", str(config), "--batch-events-max", "50"), "node", server.DEFAULTS)
    assert settings["batch_events_max"] == 50  # flag
    assert settings["port"] == 7200  # environment
    assert settings["join"] is True  # environment, parsed as a boolean
    assert settings["data_dir"] == "/from/file"  # file
    assert settings["queue_events_max"] == server.DEFAULTS["queue_events_max"]  # default


def test_bad_settings_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YUNKAI_NODE_JOIN", "maybe")
    with pytest.raises(SystemExit, match="YUNKAI_NODE_JOIN='maybe': expected true or false"):
        serving.resolve(parse(), "node", server.DEFAULTS)
    monkeypatch.delenv("YUNKAI_NODE_JOIN")
    monkeypatch.setenv("YUNKAI_NODE_PORT", "seven")
    with pytest.raises(SystemExit, match="expected a whole number"):
        serving.resolve(parse(), "node", server.DEFAULTS)
    monkeypatch.delenv("YUNKAI_NODE_PORT")
    config = tmp_path / "bad.toml"
    config.write_text("[node]\nprot = 1\n")
    with pytest.raises(SystemExit, match="unknown settings: prot"):
        serving.resolve(parse("--config", str(config)), "node", server.DEFAULTS)
