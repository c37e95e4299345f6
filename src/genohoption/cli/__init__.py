"""The command line: ``genohoption annotate`` and ``genohoption perturb`` (also ``python -m genohoption ...``).

One module per command (``_annotate``, ``_perturb``: parser, checks, job, report) and the pieces they share
(``_common``). Importing it loads neither torch, scvi-tools nor Lightning: ``genohoption --help`` is quick.
"""

from ._main import main

__all__ = ["main"]
