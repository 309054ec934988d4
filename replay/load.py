"""One entry point for every data source: a KuaiRand folder, a generic CSV, or nothing.

>>> import warnings
>>> with warnings.catch_warnings():
...     warnings.simplefilter("ignore")
...     data = load_dataset(None, synthetic=SyntheticConfig(n_users=20, n_items=50))
>>> data.report.synthetic
True
"""

from __future__ import annotations

from pathlib import Path

from replay.dataset import Dataset
from replay.exceptions import DatasetLayoutError
from replay.generic import GenericLayout, load_generic
from replay.kuairand import is_kuairand_folder, load_kuairand
from replay.synthetic import SyntheticConfig, generate


def load_dataset(
    path: str | Path | None,
    *,
    layout: GenericLayout = GenericLayout(),
    synthetic: SyntheticConfig = SyntheticConfig(),
) -> Dataset:
    """Load ``path``: a KuaiRand-Pure folder, a generic CSV file, or (``None``) synthetic data.

    The synthetic fallback emits :class:`~replay.synthetic.SyntheticDataWarning`.
    """
    if path is None:
        return generate(synthetic)
    path = Path(path)
    if is_kuairand_folder(path):
        return load_kuairand(path)
    if path.is_file():
        return load_generic(path, layout)
    raise DatasetLayoutError(f"{path} is neither a KuaiRand-Pure folder (log_standard_*.csv) nor a CSV file")
