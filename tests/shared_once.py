"""A session's expensive, JSON-able result computed once for all pytest-xdist workers.

A module- or session-scoped fixture runs once per *worker* that runs one of its tests: under
``pytest -n 2`` a long measurement shared by several tests may run twice, once on each core.
:func:`computed_once` lets the first worker compute it while the other waits on a file lock,
then reads what the first wrote (JSON: floats come back to the last bit).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from filelock import FileLock


def computed_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, compute: Callable[[], Any]
) -> Any:
    """``compute()``, run by one worker of the session; the others read its JSON result."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return compute()
    shared = tmp_path_factory.getbasetemp().parent  # the workers' common folder
    path = shared / f"{name}.json"
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            path.write_text(json.dumps(compute()))
        return json.loads(path.read_text())
