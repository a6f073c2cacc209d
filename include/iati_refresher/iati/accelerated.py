"""The compiled hot paths (``_compiled.pyx``), when they are built for the installed lxml:
tree walks for flatten and lakify, JSON helpers for lakify and index.

The stages use them when present and their own Python code otherwise: the output
is the same (``tests/unit/test_compiled.py``), only slower.  A missing build is never
silent: :data:`PROBLEM` says why, the preflight task logs it, and the test suite fails on it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

compiled: ModuleType | None
PROBLEM: str | None
try:
    compiled = importlib.import_module("iati_refresher.iati._compiled")
except ImportError as exc:  # not compiled here, or compiled for another lxml
    compiled = None
    PROBLEM = f"compiled hot paths unavailable, using the Python ones (about 2x slower stages): {exc}"
else:
    PROBLEM = None
