"""Drivers of the ``peer_files`` scenario, one per tool, each run in its own process.

A peer's driver runs with the python of that peer's virtualenv (``-I``, nothing from our
checkout on its path but this folder, for ``_driver.py``: the start and result lines,
standard library only) and imports only the peer; ``ours_files.py`` runs with this
checkout. Each one takes ``ROOT`` (``ROOT/in`` holds the inputs, ``ROOT/out`` gets the
outputs) and its degree of parallelism, does the work, and prints ``BENCH-RESULT
{json}`` with the seconds of the run after its imports. Run twice over the same
``ROOT``, the second run is the no-op run.
"""
