"""``python -m saliency``: the same as the ``saliency`` command."""

from .cli import main

raise SystemExit(main())
