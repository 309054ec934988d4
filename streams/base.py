"""Record base class, the versioned codec and the topic declaration shared by every topic file.

Wire format: a JSON (default) or msgpack object with a ``"v"`` schema version field next to the
record's own fields. Decoding validates types and ranges and raises one typed error,
:class:`streams.exceptions.RecordError`, for anything wrong with the bytes. Types are strict
(``streams.types``): no string, float or bool for an int, no number for a string, and the schema
version is exactly the int (``true`` or ``1.0`` is not version 1).

>>> from streams.impressions import Impression, CODEC
>>> raw = CODEC.encode(Impression(request_id="r1", user_id="7", item_id="9", ts_ms=1, position=0))
>>> CODEC.decode(raw).item_id
'9'
>>> CODEC.decode(b"{not json", topic="prerank.impressions", partition=0, offset=5)
Traceback (most recent call last):
...
streams.exceptions.RecordError: prerank.impressions[0]@5: invalid JSON: ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Generic, Literal, TypeVar

import msgpack
from pydantic import BaseModel, ConfigDict, Strict, ValidationError, create_model

from streams.exceptions import RecordError, RecordTooLarge

SCHEMA_VERSION = 1
MAX_RECORD_BYTES = 4 * 1024 * 1024
"""The largest value any decoder accepts, and so the budget of every record the system writes
(what it writes it reads back): half the producer's limit, the rest a margin for the key, headers
and batch overhead. Per-topic policies: ``streams.budgets``."""
PRODUCER_MAX_REQUEST_BYTES = 8 * 1024 * 1024
"""The producers' ``max_request_size`` (Faust's ``producer_max_request_size`` in ``agents/app.py``,
the replay's ``KafkaProducer``)."""
JSON_MAX_BYTES_PER_CHAR = 6
"""The most bytes one character of a string costs in the JSON the codec writes (UTF-8, not
ASCII-escaped): a control character is escaped as ``\\u00XX``; anything else is at most 4."""


class Record(BaseModel):
    """Base of every wire record: frozen, strict about unknown fields, no NaN unless allowed."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


R = TypeVar("R", bound=Record)


def json_bytes(payload) -> bytes:
    """The codec's JSON: compact, UTF-8 (not ASCII-escaped: a non-ASCII id costs 2-4 bytes per
    character rather than 6-12), no NaN."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def json_size(value) -> int:
    """Bytes of ``value`` (JSON-able: strings, numbers, lists, dicts) in the codec's JSON.

    >>> json_size(["a", "é"]), json_size("\\x00")
    (10, 8)
    """
    return len(json_bytes(value))


def json_keys_bytes(names) -> int:
    """Bytes of an object's braces and, for each field, ``"name":`` and a comma."""
    return sum(len(name) + 4 for name in names) + 2


def max_json_str(chars: int) -> int:
    """The most bytes a string of ``chars`` characters takes in the codec's JSON, quotes included."""
    return JSON_MAX_BYTES_PER_CHAR * chars + 2


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(_short_part(part) for part in first["loc"]) or "record"
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def _short_part(part) -> str:
    """A location part (a field name may be a hostile dict key), cut to 40 characters."""
    text = str(part)
    return text if len(text) <= 40 else text[:37] + "..."


def _short(value, limit: int = 40) -> str:
    """``repr`` of a bad value, cut: a reason never carries a whole hostile payload."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reject_constant(token: str) -> float:
    raise ValueError(f"{token} is not allowed")


@dataclass(frozen=True)
class Codec(Generic[R]):
    """Encodes records to bytes and decodes bytes to validated records of one type.

    JSON is decoded in one pass in Rust first (pydantic's ``model_validate_json`` over the record
    type plus its ``v`` field: 2-3x faster than parsing to Python objects and validating those,
    measured on 20 KB training samples); bytes that pass take that path and nothing else. Anything
    it refuses is decoded again the general way, which names the error exactly; so the fast path
    can only accept what the general path accepts (tested over every topic's hostile inputs).
    """

    record_type: type[R]
    format: Literal["json", "msgpack"] = "json"
    version: int = SCHEMA_VERSION

    @property
    def _version_suffix(self) -> bytes:
        return f',"v":{self.version}}}'.encode()

    def encode(self, record: R) -> bytes:
        """The record's bytes; :class:`~streams.exceptions.RecordTooLarge` over
        :data:`MAX_RECORD_BYTES` (no decoder would read it back; the producers' limit is twice that)."""
        # Records hold no NaN (validated with allow_inf_nan=False): a missing float is already None.
        if self.format == "msgpack":
            payload = record.model_dump(mode="python")
            payload["v"] = self.version
            raw = msgpack.packb(payload, use_bin_type=True)
        else:
            # pydantic's serializer writes the JSON in Rust (a quarter of the time of a dump and
            # json.dumps): compact, UTF-8, fields in order; the schema version goes last.
            raw = record.__pydantic_serializer__.to_json(record)[:-1] + self._version_suffix
        if len(raw) > MAX_RECORD_BYTES:
            raise RecordTooLarge(type(record).__name__, len(raw), MAX_RECORD_BYTES)
        return raw

    @cached_property
    def _wire_type(self) -> type[BaseModel]:
        """The record type with its strict ``v`` field: what the JSON on the wire is."""
        return create_model(f"{self.record_type.__name__}Wire", __base__=self.record_type,
                            v=(Annotated[int, Strict()], ...))

    def _fast_json(self, raw: bytes) -> R | None:
        """The record if ``raw`` is valid JSON of this type and version; None otherwise."""
        try:
            wire = self._wire_type.model_validate_json(raw)
        except ValidationError:
            return None
        if wire.v != self.version:
            return None
        values = {name: getattr(wire, name) for name in self.record_type.model_fields}
        return self.record_type.model_construct(wire.model_fields_set - {"v"}, **values)

    def decode(
        self, raw: bytes | None, *, topic: str = "?", partition: int = -1, offset: int = -1
    ) -> R:
        if self.format == "json" and raw is not None and len(raw) <= MAX_RECORD_BYTES:
            record = self._fast_json(raw)
            if record is not None:
                return record
        return self.decode_general(raw, topic=topic, partition=partition, offset=offset)

    def decode_general(
        self, raw: bytes | None, *, topic: str = "?", partition: int = -1, offset: int = -1
    ) -> R:
        """:meth:`decode` without the fast path: parse, check the version, validate; every
        refusal is a :class:`~streams.exceptions.RecordError` naming its kind."""
        where = {"topic": topic, "partition": partition, "offset": offset}
        if raw is None:
            raise RecordError("empty value (tombstone) where a record was expected", kind="tombstone", **where)
        if len(raw) > MAX_RECORD_BYTES:
            raise RecordError(f"record of {len(raw)} bytes exceeds {MAX_RECORD_BYTES}", kind="too_large", **where)
        try:
            payload = self._parse(raw)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise RecordError(f"invalid {self.format.upper()}: {exc}", kind="invalid_encoding", **where) from exc
        except RecursionError:
            raise RecordError(f"invalid {self.format.upper()}: nested too deeply", kind="invalid_encoding",
                              **where) from None
        if not isinstance(payload, dict):
            raise RecordError(f"expected an object, got {type(payload).__name__}", kind="not_an_object", **where)
        version = payload.pop("v", None)
        if type(version) is not int or version != self.version:  # exactly the int: not True, 1.0 or "1"
            raise RecordError(f"schema version {_short(version)}, expected {self.version}", kind="schema_version",
                              **where)
        try:
            return self.record_type.model_validate(payload)
        except ValidationError as exc:
            raise RecordError(_describe(exc), **where) from exc

    def _parse(self, raw: bytes):
        if self.format == "msgpack":
            return msgpack.unpackb(raw, raw=False, strict_map_key=True)
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)


def check_key(record_key: bytes | str | None, expected: str, *, field: str = "user_id") -> str | None:
    """Why a record's Kafka key does not fit the id it is keyed by (``user_id`` on every user-keyed
    topic), or None when it does: the key must be exactly the UTF-8 of ``expected``.

    A short, fixed reason (no id echoed), to use as a dead letter's reason. A missing key is a
    reason too: an unkeyed record lands on any partition, away from the user's tables.

    >>> check_key(b"u1", "u1") is None
    True
    >>> check_key(b"u2", "u1"), check_key(None, "u1")
    ('key does not match user_id', 'no key (expected user_id)')
    """
    if record_key is None:
        return f"no key (expected {field})"
    if isinstance(record_key, str):
        return None if record_key == expected else f"key does not match {field}"
    try:
        key = bytes(record_key).decode("utf-8")
    except UnicodeDecodeError:
        return "key is not UTF-8"
    return None if key == expected else f"key does not match {field}"


@dataclass(frozen=True)
class TopicSpec:
    """A topic's declaration: its logical name, partitions and configs."""

    name: str
    compacted: bool = False
    partitions: int | None = None  # None: the settings' default
    retention_ms: int | None = None  # None: the settings' default; ignored when compacted

    def configs(self, default_retention_ms: int) -> dict[str, str]:
        if self.compacted:
            return {"cleanup.policy": "compact"}
        return {
            "cleanup.policy": "delete",
            "retention.ms": str(self.retention_ms or default_retention_ms),
        }
