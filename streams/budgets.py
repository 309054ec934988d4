"""The size budget of every record the system writes, and the policy when one would not fit.

One budget for every topic: :data:`~streams.base.MAX_RECORD_BYTES` (4 MiB), the largest value any
decoder accepts (what the system writes it reads back), half the producers' 8 MiB
(:data:`~streams.base.PRODUCER_MAX_REQUEST_BYTES`) so key, headers and batch overhead have room.
:meth:`streams.base.Codec.encode` raises :class:`~streams.exceptions.RecordTooLarge` rather than
hand the producer a record over it. Sizes are of the codec's JSON (UTF-8; a character costs at most
:data:`~streams.base.JSON_MAX_BYTES_PER_CHAR` = 6 bytes, a control character's ``\\u00XX``).

Input bounds are derived from the outputs they feed, so anything accepted can be answered:

=================  ====================  =====================================================
topic              written by            policy
=================  ====================  =====================================================
score-responses    scorer                **refuse early / drop with a flag.** Everything but the
                                         id lists is bounded by construction (the user snapshot
                                         to ``SNAPSHOT_MAX_BYTES`` ~844 KiB: at most 200 entries
                                         per history list, a profile of at most 128 fields of
                                         64 + 256 characters). The scorer bounds the rest from
                                         the ids it would send (``response_bytes_bound``): the
                                         audit list (every candidate, 1 request in 20) is left
                                         out with ``audit_dropped`` when only it does not fit;
                                         if even the rest does not (a ``max_k`` configured above
                                         1000), the answer is an error, "response would exceed
                                         4194304 bytes". With the defaults (k <= 1000, 1000
                                         score items, 20 negatives) a response always fits
                                         (<= 2.6 MB); an audited one of 5000 candidates of 128
                                         characters fits unless they are mostly control
                                         characters.
training-samples   label joiner          **truncate with a flag.** At most ``MAX_SAMPLE_ITEMS``
                                         = 6000 items: the 5000 a rank-scores record may rank
                                         plus 1000 the joiner adds (exposed but unranked items,
                                         easy negatives); at most 16 objectives. Item features
                                         come from the catalog (up to 64 tags of 128 characters
                                         an item), so no count bound keeps a sample under 4 MiB:
                                         ``funnel.convert.record_from_sample`` keeps the first
                                         items that fit both bounds (ranked ones first, in rank
                                         order, so the cascade's positives stay) and sets
                                         ``truncated_items`` to how many it dropped.
dead-letters       every agent           **by reference.** Topic, partition, offset, reason (<=
                                         2000 characters), the key's and value's sizes and
                                         prefixes (1 KiB, 64 KiB; ``*_truncated``): at most
                                         ``MAX_DEAD_LETTER_BYTES`` (~101 KiB) by construction.
rank-scores        fine ranker           bounded input: <= 5000 items and candidates, objective
                                         names of 1-32 characters, <= 16 distinct per record;
                                         the simulated ranker writes the scorer's top
                                         ``rank_k`` (100), far inside.
score-requests,    outside producers     inputs, refused on read above 4 MiB or any bound (a
impressions,       (the replay)          dead letter). A user profile is bounded for the
item-catalog,                            responses it rides on (``MAX_PROFILE_BYTES`` ~241 KiB);
user-profiles                            a catalog item to ~51 KiB.
=================  ====================  =====================================================

:data:`BUDGETS` lists each topic's budget; every bound-by-construction constant is checked
against a maximal record in ``tests/streams/test_budgets.py``.
"""

from __future__ import annotations

from streams import dead_letters, score_responses, training_samples
from streams.base import JSON_MAX_BYTES_PER_CHAR, MAX_RECORD_BYTES, PRODUCER_MAX_REQUEST_BYTES
from streams.registry import TOPIC_MODULES

BUDGETS: dict[str, int] = {key: MAX_RECORD_BYTES for key in TOPIC_MODULES}
"""Topic key -> the most bytes a record of it may encode to."""

BY_CONSTRUCTION: dict[str, int] = {
    "dead_letters": dead_letters.MAX_DEAD_LETTER_BYTES,
    "user_snapshot": training_samples.SNAPSHOT_MAX_BYTES,
    "score_response_fixed": score_responses.RESPONSE_FIXED_MAX_BYTES,
}
"""Parts whose largest valid encoding follows from the field bounds alone."""

__all__ = ["BUDGETS", "BY_CONSTRUCTION", "JSON_MAX_BYTES_PER_CHAR", "MAX_RECORD_BYTES", "PRODUCER_MAX_REQUEST_BYTES"]
