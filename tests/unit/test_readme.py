"""The README's configuration table stays complete as settings and connections are added."""

from __future__ import annotations

from pathlib import Path

from iati_refresher.connections import ALL_CONNECTION_IDS
from iati_refresher.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_documented() -> None:
    missing = [env for _name, env, _value in Settings().describe() if f"`{env}`" not in README]
    assert missing == []


def test_every_connection_is_documented() -> None:
    missing = [conn_id for conn_id in ALL_CONNECTION_IDS if f"`{conn_id}`" not in README]
    assert missing == []


def test_the_two_setup_commands_are_there() -> None:
    assert "make run" in README and "make test" in README
