"""``medssl serve-dicom``: a DICOM node that receives CT/MR studies, segments them and sends DICOM SEG onwards.

Modules, one job each: ``config`` (TOML + flags), ``spool`` (durable instance store), ``jobs`` (on-disk job
states), ``selection`` (series rules), ``scp`` (C-ECHO/C-STORE listener), ``worker`` (inference), ``sender``
(C-STORE with back-off), ``service`` (wiring, quiet period, resume, shutdown), ``cli`` (the sub-command).
See docs/deployment.md.
"""

from medssl_sdk.dicom_node.config import ConfigError, Destination, NodeConfig, SelectionRules, load_config

__all__ = ["ConfigError", "Destination", "NodeConfig", "SelectionRules", "load_config"]
