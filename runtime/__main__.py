"""``python -m runtime``: the ``piphi-runtime`` command."""

from ._cli import main

raise SystemExit(main())
