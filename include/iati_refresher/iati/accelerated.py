"""The compiled tree walks (``_treewalk.pyx``), when they are built for the installed lxml.

Flatten and lakify use them when present and their own Python walks otherwise: the output
is the same (``tests/unit/test_treewalk.py``), only slower.  A missing build is never
silent: :data:`PROBLEM` says why, the preflight task logs it, and the test suite fails on it.
"""

from __future__ import annotations

from types import ModuleType

treewalk: ModuleType | None
PROBLEM: str | None
try:
    from iati_refresher.iati import _treewalk as treewalk
except ImportError as exc:  # not compiled here, or compiled for another lxml
    treewalk = None
    PROBLEM = f"compiled tree walks unavailable, using the Python ones (about 2x slower): {exc}"
else:
    PROBLEM = None
