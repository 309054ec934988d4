"""The teacher: the reference fine ranker (Wide&Deep or MMoE over click, long view and like).

>>> from models.teacher import MMoE, TeacherLearner, WideAndDeep, combine
"""

from models.losses import combine
from models.teacher.item_stats import ItemStatistics
from models.teacher.learner import TeacherLearner
from models.teacher.model import TeacherConfig, TeacherModel
from models.teacher.networks import MMoE, WideAndDeep

__all__ = ["ItemStatistics", "MMoE", "TeacherConfig", "TeacherLearner", "TeacherModel", "WideAndDeep", "combine"]
