"""Errors of the zoo. Every message says what is wrong, where (file, key, field) and what to do."""


class MedsslError(Exception):
    """Base class of the errors medssl raises on bad input, files or weights."""


class CardError(MedsslError, ValueError):
    """A model card is malformed or names something that does not exist."""


class WeightsError(MedsslError):
    """Weights could not be found, verified or loaded."""


class WeightsUnavailableError(WeightsError):
    """The weights are neither local nor reachable (offline, not cached, not published)."""


class ChecksumMismatchError(WeightsError):
    """A weights file's sha256 differs from the pinned one."""


class StateDictMismatchError(WeightsError):
    """A state dict has missing, unexpected or wrongly shaped tensors for the model."""


class CheckpointFormatError(WeightsError):
    """A checkpoint file or directory is not in the expected format."""


class ExportError(MedsslError):
    """A model cannot be exported as asked, or an exported model cannot run here."""
