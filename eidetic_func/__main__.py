"""``python -m eidetic_func`` is the ``eidetic-func`` command."""

from eidetic_func.runner.cli import main

raise SystemExit(main())
