"""``python -m eidetic_func`` is the ``eidetic-func`` command."""

from eidetic_func.runner.cli_front import main

raise SystemExit(main())
