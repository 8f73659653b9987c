"""``python -m eidetic_func`` is the ``eidetic-func`` command."""

from .cli import main

raise SystemExit(main())
