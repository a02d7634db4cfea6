"""``python -m attnkit.cli``: the same as the ``attnkit`` command."""

from . import main

raise SystemExit(main())
