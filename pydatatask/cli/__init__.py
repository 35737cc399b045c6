"""The command line of a pipeline: ``python my_pipeline.py run|status|rm|ls|cat|inject|launch|logs|graph|why``.

Call :func:`main` at the bottom of the script that builds the pipeline::

    if __name__ == "__main__":
        pydatatask.main(pipeline)

:func:`run_cli` does the same without calling :func:`sys.exit` and returns the exit
status (0 success, 1 the command failed, 2 usage error, 130/143 interrupted by
SIGINT/SIGTERM). See ``docs/cli.rst``.
"""

from __future__ import annotations

from .main import build_parser, main, run_cli

__all__ = ("main", "run_cli", "build_parser")
