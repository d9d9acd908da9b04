"""`make bench` (bench/__main__.py). The bench drives sipp through the tests' own driver
(tests/sipp_peer.py, with its scenarios), so that folder is put on the import path here,
before any part of the bench imports it."""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
