"""The node's config: TOML + flag overrides, and errors that name the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from medssl_sdk.dicom_node.config import ConfigError, Destination, load_config, parse_destination
from medssl_sdk.dicom_node.sender import backoff_delay

CONFIG = """
[node]
ae_title = "SEGNODE"
port = 11113
spool_dir = "/var/spool/medssl"
quiet_period_s = 5

[model]
name = "phantom-mit-nano"
devices = ["cuda:0", "cuda:1"]

[destination]
ae_title = "PACS"
host = "10.0.0.5"
port = 104

[selection]
modalities = ["CT", "MR"]
orientations = ["axial"]
min_slices = 20
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_file_values_are_read_and_flags_override_them(tmp_path: Path) -> None:
    path = write(tmp_path, CONFIG)
    config = load_config(path)
    assert (config.ae_title, config.port, config.quiet_period_s, config.model) == ("SEGNODE", 11113, 5.0, "phantom-mit-nano")
    assert config.spool_dir == Path("/var/spool/medssl") and config.devices == ("cuda:0", "cuda:1")
    assert config.destination.describe() == "PACS@10.0.0.5:104" and config.destination.max_attempts == 20
    assert config.selection.modalities == ("CT", "MR") and config.selection.min_slices == 20

    overridden = load_config(path, {"port": 4242, "destination": "ARCHIVE@pacs.local:11112", "model": None})
    assert overridden.port == 4242 and overridden.model == "phantom-mit-nano"
    assert overridden.destination.describe() == "ARCHIVE@pacs.local:11112"


def test_flags_alone_are_enough() -> None:
    config = load_config(None, {"model": "phantom-mit-nano", "destination": "PACS@127.0.0.1:4242"})
    assert config.ae_title == "MEDSSL" and config.destination.port == 4242


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[node]\nport = "eleven"\n[model]\nname = "m"\n', r"node.toml: \[node\] port: expected an integer; got 'eleven'"),
        ('[node]\nprot = 104\n[model]\nname = "m"\n', r"node.toml: \[node\] prot: unknown key; allowed: .*port"),
        ('[nodes]\nport = 104\n', r"node.toml: unknown section \[nodes\]"),
        ('[node]\nport = 104\n', r"node.toml: \[model\] name: required"),
        ('[model]\nname = "m"\n[destination]\nport = 70000\n', r"\[destination\] port: must be in 1-65535; got 70000"),
        ('[model]\nname = "m"\n[selection]\norientations = ["oblique"]\n', r"\[selection\] orientations: allowed: axial"),
        ('[model]\nname = "m"\n[node]\nae_title = "A\\\\B"\n', r"\[node\] ae_title: must be 1-16 printable"),
        ('[model\nname = "m"\n', r"node.toml: not valid TOML"),
    ],
)
def test_bad_values_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_file_and_bad_destination_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent.toml: config file not found"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match=r"AE@host:port"):
        parse_destination("PACS:104")


def test_the_command_line_reports_a_config_error_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medssl_sdk.cli import main

    path = write(tmp_path, '[model]\nname = "phantom-mit-nano"\n[destination]\nport = 70000\n')
    assert main(["serve-dicom", "--config", str(path)]) == 1
    error = capsys.readouterr().err
    assert error.strip() == f"medssl: error: {path}: [destination] port: must be in 1-65535; got 70000"
    assert main(["serve-dicom", "--config", str(path), "--destination", "PACS@127.0.0.1:104", "--port", "0"]) == 1
    assert "medssl: error: command line: --port: must be in 1-65535; got 0" in capsys.readouterr().err


def test_auto_devices_give_one_worker_per_gpu_or_one_on_cpu() -> None:
    import torch

    from medssl_sdk.dicom_node.service import worker_devices

    gpus = [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    assert worker_devices(["auto"]) == (gpus or ["cpu"])
    assert worker_devices(["cpu", "cuda:1"]) == ["cpu", "cuda:1"]


def test_default_retries_outlast_an_hour_of_destination_downtime() -> None:
    """A PACS restart or a network change must not turn finished results into failed jobs."""
    default = Destination()
    waits = [backoff_delay(failure, default.backoff_initial_s, default.backoff_max_s) for failure in range(1, default.max_attempts)]
    assert sum(waits) >= 3600, f"the default sender gives up after {sum(waits):.0f} s"
