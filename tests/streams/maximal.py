"""Records at every bound, for the budget tests: the longest strings of the costliest characters.

``control``: the 27 control characters JSON escapes as ``\\u00XX`` (6 bytes each, the worst case
of the codec's UTF-8 JSON). ``astral``: characters outside the BMP (4 bytes of UTF-8, 12 when
ASCII-escaped: the "long non-ASCII ids" of issue 13).
"""

from __future__ import annotations

from types import MappingProxyType

from models.features import UserFeatures
from streams.training_samples import MAX_HISTORY, UserSnapshot
from streams.types import MAX_ID_CHARS, MAX_PROFILE_KEY_CHARS, MAX_PROFILE_VALUE_CHARS
from streams.user_profiles import MAX_PROFILE_FIELDS

ALPHABETS = {
    "control": [chr(c) for c in range(32) if chr(c) not in "\b\t\n\f\r"],
    "astral": [chr(0x1F600 + c) for c in range(27)],
}


def text(index: int, length: int, alphabet: str = "control", tag: int = 0) -> str:
    """A string of ``length`` characters of the alphabet, distinct for each ``(tag, index)``."""
    chars = ALPHABETS[alphabet]
    base = len(chars)
    digits = [chars[tag % base]]
    for _ in range(4):  # 27**4 = 531441 distinct indices
        index, digit = divmod(index, base)
        digits.append(chars[digit])
    assert index == 0, "index too large"
    return "".join(digits) + chars[0] * (length - len(digits))


def ids(n: int, alphabet: str = "control", tag: int = 0) -> list[str]:
    return [text(k, MAX_ID_CHARS, alphabet, tag) for k in range(n)]


def maximal_profile(alphabet: str = "control") -> dict[str, str]:
    return {text(k, MAX_PROFILE_KEY_CHARS, alphabet, 1): text(k, MAX_PROFILE_VALUE_CHARS, alphabet, 2)
            for k in range(MAX_PROFILE_FIELDS)}


def maximal_user(user_id: str, alphabet: str = "control") -> UserFeatures:
    """A user whose snapshot is at every bound (what the history and profile tables can hold)."""
    return UserFeatures(
        user_id=user_id, profile=MappingProxyType(maximal_profile(alphabet)), tab=-(2**63), hour=23, weekday=6,
        history_items=tuple(ids(MAX_HISTORY, alphabet, 3)), history_authors=tuple(ids(MAX_HISTORY, alphabet, 4)),
        history_tags=tuple(ids(MAX_HISTORY, alphabet, 5)), session_items=tuple(ids(MAX_HISTORY, alphabet, 6)),
        session_length=2**63 - 1,
    )


def maximal_snapshot(user_id: str, alphabet: str = "control") -> UserSnapshot:
    from funnel.convert import snapshot_from_user

    return snapshot_from_user(maximal_user(user_id, alphabet))
