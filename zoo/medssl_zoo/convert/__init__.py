"""One-time converters from official (pickled) checkpoints to medssl checkpoint directories."""

from medssl_zoo.convert.swin import convert_swin_ssl, official_swin_key_to_medssl
from medssl_zoo.convert.unimiss import convert_unimiss, official_key_to_medssl

__all__ = ["convert_swin_ssl", "convert_unimiss", "official_key_to_medssl", "official_swin_key_to_medssl"]
