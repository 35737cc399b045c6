"""``python -m pydatatask``: the ``pydatatask`` console script (:mod:`pydatatask.cli.command`)."""

from __future__ import annotations

from .cli.command import main

if __name__ == "__main__":
    main()
