"""Model cards: everything needed to build, feed, label and fetch a zoo entry, in one small file.

A card is TOML in ``medssl_zoo/cards/`` (one file per entry) and JSON inside a checkpoint directory's
``config.json``. Axis conventions: spatial sizes and spacings are in the network input's array order,
(H, W) for 2D and (D, H, W) for 3D; spacing is in millimetres.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medssl_zoo.errors import CardError

INTENSITY_KINDS = ("affine", "zscore", "unit-range")
BRANCHES = ("2d", "3d")
#: World axis named by each anatomical direction code (nibabel's axis codes).
AXIS_OF_CODE = {"R": "x", "L": "x", "A": "y", "P": "y", "S": "z", "I": "z"}


@dataclass(frozen=True)
class Intensity:
    """Intensity normalisation of the input.

    ``affine``: ``(clip(x, *clip) - offset) / scale`` with fixed numbers (CT in HU);
    ``zscore``: per image, ``(x - mean) / std`` (MR); ``unit-range``: per image, min-max to [0, 1] (X-ray).
    """

    kind: str
    clip: tuple[float, float] | None = None
    offset: float = 0.0
    scale: float = 1.0


@dataclass(frozen=True)
class InputSpec:
    """One input branch: channels the network takes, sliding-window patch, target spacing, intensity.

    ``orientation`` (3D only) names the anatomical direction each array axis (D, H, W) runs towards, as
    nibabel axis codes, e.g. ``"SAR"``: axis 0 towards Superior, axis 1 Anterior, axis 2 patient's Right.
    Inputs are reoriented to it before the network (and labels back), so the network always sees the
    layout it was trained on. None: arrays are used as read.
    """

    channels: int
    patch_size: tuple[int, ...]
    intensity: Intensity
    spacing: tuple[float, ...] | None = None
    orientation: str | None = None


@dataclass(frozen=True)
class CodedConcept:
    """A coded term for DICOM SEG (e.g. scheme ``SCT``, value ``10200004``, meaning ``Liver``)."""

    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class Label:
    """Output class ``index`` (0 is background for segmentation) with its name and optional code."""

    index: int
    name: str
    code: CodedConcept | None = None


@dataclass(frozen=True)
class WeightsSpec:
    """Where the weights live and their pinned sha256.

    ``repo_id``/``revision`` name a Hugging Face Hub repository (None for a local-only checkpoint);
    ``sha256`` is the hex digest of ``file``; None means not published yet, and pretrained loading
    refuses the card (``note`` says why).
    """

    file: str = "model.safetensors"
    sha256: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    note: str = ""


@dataclass(frozen=True)
class ModelCard:
    """A zoo entry. ``architecture`` names a builder in the registry; ``kwargs`` are its arguments."""

    name: str
    summary: str
    architecture: str
    kwargs: Mapping[str, Any]
    inputs: Mapping[str, InputSpec]
    labels: tuple[Label, ...] = ()
    weights: WeightsSpec = field(default_factory=WeightsSpec)
    licence: str = ""
    citation: str = ""

    @property
    def spatial_dims(self) -> tuple[int, ...]:
        """The input dimensionalities the model takes, e.g. (2, 3)."""
        return tuple(int(key[0]) for key in BRANCHES if key in self.inputs)

    @property
    def task(self) -> str:
        """What the network's forward gives: ``"segment"``, ``"classify"`` or ``"embed"`` (no ``task`` kwarg)."""
        return str(self.kwargs.get("task", "embed"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the card-file layout, read back by :meth:`from_dict` (None values dropped)."""
        data = _drop_none(asdict(self))
        data["architecture"] = {"name": data.pop("architecture"), "kwargs": data.pop("kwargs")}
        return data

    def with_weights(self, weights: WeightsSpec) -> ModelCard:
        """A copy with another weights section (e.g. the sha256 of a freshly written checkpoint)."""
        return ModelCard(**{**self.__dict__, "weights": weights})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> ModelCard:
        """Parse and validate; errors name ``source`` (a file path) and the offending field."""
        reader = _Reader(data, source)
        architecture = reader.table("architecture", required=True)
        card = cls(
            name=reader.str("name"),
            summary=reader.str("summary", ""),
            architecture=reader.get(architecture, "name", str, "architecture.name"),
            kwargs=dict(reader.get(architecture, "kwargs", dict, "architecture.kwargs", {})),
            inputs={key: reader.input_spec(key) for key in reader.table("inputs", required=True)},
            labels=tuple(reader.label(i, item) for i, item in enumerate(reader.list("labels"))),
            weights=reader.weights(),
            licence=reader.str("licence", ""),
            citation=reader.str("citation", ""),
        )
        unknown_inputs = sorted(set(card.inputs) - set(BRANCHES))
        if unknown_inputs:
            reader.fail("inputs", f"has unknown branch(es) {unknown_inputs}; use '2d' and/or '3d'")
        if [label.index for label in card.labels] != list(range(len(card.labels))):
            reader.fail("labels", "indices must be 0, 1, 2, ... in order")
        num_classes = card.kwargs.get("num_classes")
        if num_classes is not None and card.labels and num_classes != len(card.labels):
            reader.fail("labels", f"has {len(card.labels)} entries but architecture.kwargs.num_classes is {num_classes}")
        return card

    @classmethod
    def from_toml(cls, path: Path) -> ModelCard:
        """Read a card file."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise CardError(f"{path}: not valid TOML: {error}") from None
        return cls.from_dict(data, str(path))


class _Reader:
    """Typed access to a card's raw mapping with errors that name the source and field."""

    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        self.data, self.source = data, source

    def fail(self, field_name: str, problem: str) -> Any:
        raise CardError(f"{self.source}: card field '{field_name}' {problem}")

    def get(self, mapping: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
        if key not in mapping:
            return self.fail(where, "is missing") if default is ... else default
        value = mapping[key]
        is_number = kind in (int, float, (int, float))
        if not isinstance(value, kind) or (is_number and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.fail(where, f"must be {names}; got {value!r}")
        return value

    def str(self, key: str, default: Any = ...) -> str:
        return self.get(self.data, key, str, key, default)

    def list(self, key: str) -> list[Any]:
        return self.get(self.data, key, list, key, [])

    def table(self, key: str, required: bool = False) -> Mapping[str, Any]:
        return self.get(self.data, key, dict, key, ... if required else {})

    def input_spec(self, branch: str) -> InputSpec:
        where = f"inputs.{branch}"
        raw = self.get(self.table("inputs"), branch, dict, where)
        intensity = self.get(raw, "intensity", dict, f"{where}.intensity")
        kind = self.get(intensity, "kind", str, f"{where}.intensity.kind")
        if kind not in INTENSITY_KINDS:
            self.fail(f"{where}.intensity.kind", f"must be one of {INTENSITY_KINDS}; got {kind!r}")
        dims = int(branch[0]) if branch in BRANCHES else 0
        clip = self.numbers(intensity, "clip", f"{where}.intensity.clip", 2, float)
        patch = self.numbers(raw, "patch_size", f"{where}.patch_size", dims, int, required=True)
        spacing = self.numbers(raw, "spacing", f"{where}.spacing", dims, float)
        orientation = self.get(raw, "orientation", str, f"{where}.orientation", None)
        if orientation is not None and (
            dims != 3 or len(orientation) != 3 or sorted(AXIS_OF_CODE.get(c, "?") for c in orientation) != ["x", "y", "z"]
        ):
            problem = f"must be 3 axis codes, one each of R/L, A/P, S/I (3D only), e.g. 'SAR'; got {orientation!r}"
            self.fail(f"{where}.orientation", problem)
        return InputSpec(
            channels=self.get(raw, "channels", int, f"{where}.channels"),
            patch_size=patch,
            intensity=Intensity(
                kind=kind,
                clip=clip,
                offset=float(self.get(intensity, "offset", (int, float), f"{where}.intensity.offset", 0.0)),
                scale=float(self.get(intensity, "scale", (int, float), f"{where}.intensity.scale", 1.0)),
            ),
            spacing=spacing,
            orientation=orientation,
        )

    def numbers(
        self, mapping: Mapping[str, Any], key: str, where: str, count: int, kind: type, required: bool = False
    ) -> tuple | None:
        """A list of ``count`` numbers (ints for ``kind=int``), as a tuple; None if absent and optional."""
        values = self.get(mapping, key, list, where, ... if required else None)
        if values is None:
            return None
        allowed = int if kind is int else (int, float)
        if (count and len(values) != count) or not all(isinstance(v, allowed) and not isinstance(v, bool) for v in values):
            self.fail(where, f"must be {count} {'integers' if kind is int else 'numbers'}; got {values!r}")
        return tuple(kind(v) for v in values)

    def label(self, position: int, raw: Any) -> Label:
        where = f"labels[{position}]"
        if not isinstance(raw, dict):
            self.fail(where, f"must be a table with index and name; got {raw!r}")
        code = self.get(raw, "code", dict, f"{where}.code", None)
        return Label(
            index=self.get(raw, "index", int, f"{where}.index"),
            name=self.get(raw, "name", str, f"{where}.name"),
            code=CodedConcept(
                scheme=self.get(code, "scheme", str, f"{where}.code.scheme"),
                value=str(self.get(code, "value", (str, int), f"{where}.code.value")),
                meaning=self.get(code, "meaning", str, f"{where}.code.meaning"),
            ) if code is not None else None,
        )

    def weights(self) -> WeightsSpec:
        raw = self.table("weights")
        sha256 = self.get(raw, "sha256", str, "weights.sha256", None) or None
        if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256)):
            self.fail("weights.sha256", f"must be 64 lower-case hex digits; got {sha256!r}")
        return WeightsSpec(
            file=self.get(raw, "file", str, "weights.file", "model.safetensors"),
            sha256=sha256,
            repo_id=self.get(raw, "repo_id", str, "weights.repo_id", None),
            revision=self.get(raw, "revision", str, "weights.revision", None),
            note=self.get(raw, "note", str, "weights.note", ""),
        )


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value
