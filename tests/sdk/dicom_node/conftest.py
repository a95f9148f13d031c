"""Fixtures of the DICOM node's tests: Orthanc as the PACS (one per session) and nodes run as subprocesses."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # peers.py, studies.py
from peers import NodeProcess, Orthanc, free_port  # noqa: E402

NodeFactory = Callable[..., NodeProcess]


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc"))
    yield pacs
    pacs.stop()


def node_config_text(spool: Path, port: int, peer: str, **sections: dict[str, object]) -> str:
    """A TOML config for a test node: phantom-mit-nano on CPU, a 1 s quiet period, at least 8 slices."""
    values: dict[str, dict[str, object]] = {
        "node": {"ae_title": "MEDSSL", "host": "127.0.0.1", "port": port, "spool_dir": str(spool), "quiet_period_s": 1.0,
                 "min_free_mb": 1.0},
        "model": {"name": "phantom-mit-nano", "devices": ["cpu"]},
        "destination": dict(zip(("ae_title", "host", "port"), _split_destination(peer)))
        | {"backoff_initial_s": 0.5, "backoff_max_s": 2.0, "timeout_s": 10.0},
        "selection": {"modalities": ["CT"], "min_slices": 8},
    }
    for section, changes in sections.items():
        values[section] = values[section] | changes
    lines = []
    for section, table in values.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def _split_destination(text: str) -> tuple[str, str, int]:
    ae, address = text.split("@")
    host, port = address.rsplit(":", 1)
    return ae, host, int(port)


def _toml(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return str(value)


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[NodeFactory]:
    """``make_node("AE@host:port", **sections)`` -> a NodeProcess (not started) with its spool and log in tmp_path."""
    nodes: list[NodeProcess] = []

    def make(peer: str, name: str = "node", **sections: dict[str, object]) -> NodeProcess:
        port = free_port()
        config = tmp_path / f"{name}.toml"
        config.write_text(node_config_text(tmp_path / f"{name}-spool", port, peer, **sections))
        node = NodeProcess(config, tmp_path / f"{name}.log", port)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()
