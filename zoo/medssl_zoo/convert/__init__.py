"""One-time converters from official (pickled) checkpoints to medssl checkpoint directories."""

from medssl_zoo.convert.unimiss import convert_unimiss, official_key_to_medssl

__all__ = ["convert_unimiss", "official_key_to_medssl"]
