"""``python -m anaxreport`` is the ``anaxreport`` command."""

from .cli import entry

entry()
