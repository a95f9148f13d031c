"""The DICOM node's tests (a package, so its conftest does not replace tests/conftest.py as the ``conftest`` module)."""
