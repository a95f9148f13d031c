"""The DICOM node's settings: one TOML file (sections ``[node]``, ``[model]``, ``[destination]``, ``[selection]``)
whose values command-line flags may override.

Every error names the file and the key (``node.toml: [destination] port: ...``) and says what is allowed;
unknown keys are errors too, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from medssl_zoo import MedsslError

#: Plane names of ``[selection] orientations``: the patient axis closest to the slice normal decides.
ORIENTATIONS = ("axial", "coronal", "sagittal")

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 characters, no backslash or control characters
_DESTINATION = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")


class ConfigError(MedsslError, ValueError):
    """The node's config file or flags hold a value that is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class Destination:
    """The DICOM peer (PACS) the SEG results are sent to by C-STORE, and how sending is retried.

    Attributes:
        ae_title, host, port: the peer's Application Entity.
        max_attempts: C-STORE attempts per result before the job is marked failed (the defaults retry for about
            an hour, so a PACS restart or a network outage does not lose results).
        backoff_initial_s, backoff_max_s: wait ``min(initial * 2**k, max)`` seconds after the k-th failure.
        timeout_s: connection, ACSE and DIMSE timeout.
    """

    ae_title: str = "PACS"
    host: str = "127.0.0.1"
    port: int = 104
    max_attempts: int = 20
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 300.0
    timeout_s: float = 30.0

    def describe(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class SelectionRules:
    """Which series of a complete study are segmented (the eligible one with the most slices is chosen).

    Attributes:
        modalities: accepted Modality values.
        orientations: accepted slice planes (see ``ORIENTATIONS``).
        min_slices: fewest images a series needs.
    """

    modalities: tuple[str, ...] = ("CT",)
    orientations: tuple[str, ...] = ORIENTATIONS
    min_slices: int = 16


@dataclass(frozen=True)
class NodeConfig:
    """Everything ``medssl serve-dicom`` needs.

    Attributes:
        ae_title, host, port: our Application Entity (the address it listens on).
        spool_dir: received instances, job state and results live here (see docs/deployment.md).
        min_free_mb: new associations are refused (and C-STOREs answered "out of resources") while the spool's
            file system has less free space than this.
        quiet_period_s: a study is complete when no instance of it arrived for this long.
        max_associations: concurrent associations accepted.
        model: zoo name or checkpoint directory for ``medssl_sdk.load``.
        weights: optional local weights file/dir for a zoo name.
        devices: one inference worker per entry; ``"auto"`` means one per visible GPU, else one on CPU.
        series_number, series_description: of the SEG series written.
        destination: where SEG results go.
        selection: series rules.
        log_level: Python logging level name.
    """

    ae_title: str = "MEDSSL"
    host: str = "0.0.0.0"
    port: int = 11112
    spool_dir: Path = Path("medssl-spool")
    min_free_mb: float = 1024.0
    quiet_period_s: float = 30.0
    max_associations: int = 10
    model: str = ""
    weights: Path | None = None
    devices: tuple[str, ...] = ("auto",)
    series_number: int = 9901
    series_description: str = "medssl segmentation"
    destination: Destination = field(default_factory=Destination)
    selection: SelectionRules = field(default_factory=SelectionRules)
    log_level: str = "INFO"


#: Keys of NodeConfig read from each of its two sections.
_NODE_KEYS = {"ae_title", "host", "port", "spool_dir", "min_free_mb", "quiet_period_s", "max_associations", "log_level"}
_MODEL_KEYS = {"name", "weights", "devices", "series_number", "series_description"}
#: TOML section -> the keys it may hold.
_SECTION_KEYS: dict[str, set[str]] = {
    "node": _NODE_KEYS,
    "model": _MODEL_KEYS,
    "destination": {f.name for f in fields(Destination)},
    "selection": {f.name for f in fields(SelectionRules)},
}
#: Command-line flags whose name is not ``--`` + the field name with dashes.
_FLAG_NAMES = {"quiet_period_s": "--quiet-period", "devices": "--device"}


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> NodeConfig:
    """Read ``path`` (TOML; None for defaults only), apply ``overrides`` (NodeConfig field -> value, None = keep), check.

    ``overrides`` may hold ``destination`` as ``"AE@host:port"``. Raises ``ConfigError`` naming the file and key.
    """
    source = str(path) if path is not None else "command line"
    raw = _read_toml(Path(path)) if path is not None else {}
    values: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {"destination": {}, "selection": {}}
    for section, table in raw.items():
        if section not in _SECTION_KEYS or not isinstance(table, dict):
            raise ConfigError(f"{source}: unknown section [{section}]; sections are {', '.join(f'[{s}]' for s in _SECTION_KEYS)}")
        allowed = _SECTION_KEYS[section]
        for key, value in table.items():
            if key not in allowed:
                raise ConfigError(f"{source}: [{section}] {key}: unknown key; allowed: {', '.join(sorted(allowed))}")
            if section in nested:
                nested[section][key] = value
            else:
                values["model" if (section, key) == ("model", "name") else key] = value
    flags: dict[tuple[str, str], str] = {}  # (section, key) -> the flag that set it
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "destination":
            parsed = parse_destination(value)
            nested["destination"].update(parsed)
            flags.update({("destination", name): "--destination" for name in parsed})
        else:
            values[key] = value
            flags[(_section_of(key), _file_key(key))] = _FLAG_NAMES.get(key, "--" + key.replace("_", "-"))

    def where(section: str, key: str) -> str:
        return f"command line: {flags[(section, key)]}" if (section, key) in flags else f"{source}: [{section}] {key}"

    config = NodeConfig(
        **{key: _coerce(where(_section_of(key), _file_key(key)), value, NodeConfig, key) for key, value in values.items()},
        destination=Destination(
            **{key: _coerce(where("destination", key), value, Destination, key) for key, value in nested["destination"].items()}
        ),
        selection=SelectionRules(
            **{key: _coerce(where("selection", key), value, SelectionRules, key) for key, value in nested["selection"].items()}
        ),
    )
    _check(config, where)
    return config


def parse_destination(text: str) -> dict[str, Any]:
    """``"PACS@10.0.0.5:104"`` -> ``{"ae_title": "PACS", "host": "10.0.0.5", "port": 104}``."""
    match = _DESTINATION.match(text.strip())
    if match is None:
        raise ConfigError(f"--destination must look like AE@host:port (e.g. PACS@10.0.0.5:104); got {text!r}")
    return {"ae_title": match["ae"], "host": match["host"], "port": int(match["port"])}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (see docs/deployment.md for an example)") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def _section_of(key: str) -> str:
    return "model" if key in _MODEL_KEYS | {"model"} else "node"


def _file_key(key: str) -> str:
    """The config file's name for a NodeConfig field (``[model] name`` holds ``model``)."""
    return "name" if key == "model" else key


def _coerce(where: str, value: Any, owner: type, key: str) -> Any:
    """``value`` converted to the type of ``owner``'s field ``key``; a ConfigError naming ``where`` otherwise."""
    default = {f.name: f for f in fields(owner)}[key].default
    if isinstance(default, bool) or isinstance(value, bool):
        raise ConfigError(f"{where}: expected a {type(default).__name__}; got {value!r}")
    if isinstance(default, tuple):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
            raise ConfigError(f"{where}: expected a list of strings; got {value!r}")
        return tuple(items)
    if key == "weights" or isinstance(default, Path):
        if not isinstance(value, str | Path) or not str(value):
            raise ConfigError(f"{where}: expected a path; got {value!r}")
        return Path(value).expanduser()
    if isinstance(default, int) and not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer; got {value!r}")
    if isinstance(default, float) and not isinstance(value, int | float):
        raise ConfigError(f"{where}: expected a number; got {value!r}")
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string; got {value!r}")
    return float(value) if isinstance(default, float) else value


def _check(config: NodeConfig, where: Callable[[str, str], str]) -> None:
    """Range checks that need more than a type; ``where(section, key)`` names the value's origin."""

    def fail(section: str, key: str, message: str) -> None:
        raise ConfigError(f"{where(section, key)}: {message}")

    if not config.model:
        fail("model", "name", "required: a zoo name (`medssl zoo list`) or a checkpoint directory (flag --model)")
    for section, ae in (("node", config.ae_title), ("destination", config.destination.ae_title)):
        if not _AE_TITLE.match(ae) or not ae.strip():
            fail(section, "ae_title", f"must be 1-16 printable characters without a backslash; got {ae!r}")
    for section, port in (("node", config.port), ("destination", config.destination.port)):
        if not 0 < port < 65536:
            fail(section, "port", f"must be in 1-65535; got {port}")
    positive = {
        ("node", "quiet_period_s"): config.quiet_period_s,
        ("node", "max_associations"): config.max_associations,
        ("destination", "max_attempts"): config.destination.max_attempts,
        ("destination", "timeout_s"): config.destination.timeout_s,
        ("selection", "min_slices"): config.selection.min_slices,
    }
    for (section, key), value in positive.items():
        if value <= 0:
            fail(section, key, f"must be > 0; got {value}")
    if config.min_free_mb < 0:
        fail("node", "min_free_mb", f"must be >= 0; got {config.min_free_mb}")
    if not 0 <= config.destination.backoff_initial_s <= config.destination.backoff_max_s:
        fail("destination", "backoff_initial_s", "need 0 <= backoff_initial_s <= backoff_max_s")
    unknown = set(config.selection.orientations) - set(ORIENTATIONS)
    if unknown or not config.selection.orientations:
        fail("selection", "orientations", f"allowed: {', '.join(ORIENTATIONS)}; got {list(config.selection.orientations)}")
    if not config.selection.modalities:
        fail("selection", "modalities", "name at least one modality, e.g. [\"CT\"]")
    if not config.devices:
        fail("model", "devices", 'name at least one device, e.g. ["auto"], ["cpu"] or ["cuda:0", "cuda:1"]')
    if config.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail("node", "log_level", f"one of DEBUG, INFO, WARNING, ERROR; got {config.log_level!r}")

