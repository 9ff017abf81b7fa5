"""``python -m pyro_aevb.cli``: the ``pyro-aevb`` command."""

from .entry import main

raise SystemExit(main())
