"""Replay: real (or synthetic) logs through the pre-ranking funnel, and the metrics to judge it.

Data (:func:`replay.load.load_dataset`): a KuaiRand-Pure folder (:mod:`replay.kuairand`), a generic
interaction CSV (:mod:`replay.generic`), or, with no path, synthetic data that warns loudly
(:mod:`replay.synthetic`). Every loader returns a :class:`replay.dataset.Dataset`: item catalog
(:class:`models.features.ItemFeatures`), profiles, exposures (:class:`replay.events.Exposure`) in
event-time order, history seeds, and a report of skipped rows.

Funnel pieces shared by the offline evaluator and the streaming replay: pages
(:func:`replay.grouping.group_requests`), recall candidates
(:class:`replay.candidates.CandidateGenerator`), metrics (:mod:`funnel.metrics`). The offline
funnel itself is :class:`replay.offline.OfflineFunnel`, driven by ``bench/quality.py``.
"""
