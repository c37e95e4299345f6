"""Imported first by :mod:`genohoption.model`: warnings of third-party imports that users cannot act on.

scvi-tools imports ``tqdm.auto``, which in a Jupyter kernel without ipywidgets warns "IProgress not found"
(naming its install path); training shows Lightning's text progress bar, which needs no widgets.
"""

import warnings

warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")
