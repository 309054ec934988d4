"""The article's older pre-rankers over streaming statistical features (same Ranker protocol).

>>> from models.baselines import GlobalCTR, LogisticFTRL, OnlineTree
"""

from models.baselines.global_ctr import GlobalCTR
from models.baselines.logistic import LogisticFTRL
from models.baselines.stat_features import FEATURE_NAMES, StatisticalFeatures
from models.baselines.tree import OnlineTree

__all__ = ["FEATURE_NAMES", "GlobalCTR", "LogisticFTRL", "OnlineTree", "StatisticalFeatures"]
