"""Continual-learning benchmarks on real data: the presets of ``eidetic-func bench``.

Run: ``python -m benchmarks.continual PRESET --data-root DIR [--device cuda]`` (``--list``
shows the presets). Writes ``results.json`` and ``summary.md`` (accuracy matrix and
metrics) under ``benchmarks/results/PRESET/``.
"""

from __future__ import annotations

import sys

from eidetic_func.runner.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
