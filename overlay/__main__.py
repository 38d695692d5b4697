"""``python -m overlay``: the same as the ``overlay`` command."""

from overlay.cli import main

main()
