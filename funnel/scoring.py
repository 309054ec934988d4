"""Per-request scoring: the user tower once, item vectors held in process, cosine, top-k.

A version's published item vectors are resident: the scorer reads the whole set in one bulk read
(``funnel.store``) and keeps it as one matrix with an id index (:class:`ResidentVectors`), so a
request never waits on Redis for an item the version holds. An item outside that set gets its
features from the catalog (Redis) and its vector from the item tower, once per version: the
version's own LRU keeps it. The model, its resident vectors and its LRU are one
:class:`ServingVersion`; :meth:`Scorer.refresh` builds the next one completely (in a worker
thread, in the agent) and swaps it in with one assignment, so requests see either the old version
or the new one, never a mix, and publishing every 2 s does not show in a request's latency.

If Redis is unreachable the scorer keeps answering with the version it holds, computing vectors
of unpublished items from the features it has, and says so in the response (``degraded``).

Every response fits the record budget (``streams.budgets``, 4 MiB, the user snapshot the agent
attaches included): an audited request whose candidates do not fit is answered without them
(``audit_dropped``); a response that would not fit even so is refused with an error saying so.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import torch

from core.redis import RedisUnavailable
from funnel.catalog import ItemCatalog
from funnel.metrics import top_k
from models.features import ItemFeatures, UserFeatures
from streams.score_requests import ScoreRequest
from streams.score_responses import MAX_NEGATIVES, MAX_RESPONSE_BYTES, ScoreResponse, response_bytes_bound

log = logging.getLogger(__name__)

REDIS_DOWN = "redis unavailable: vectors computed locally"
SCORER_STAGES = ("user_tower", "item_vectors", "product_top_k", "response")
TOO_LARGE = f"response would exceed {MAX_RESPONSE_BYTES} bytes"


def fit_response(
    items: Sequence[str], scored: Sequence[str], negatives: Sequence[str], audit: list[str]
) -> tuple[list[str], bool, str | None]:
    """``(audit, audit_dropped, problem)`` for a response holding these ids: the audit list as it
    is when everything fits the budget, empty and dropped when only it does not, or a problem when
    the response would not fit without it either. Counts first (no pass over the ids: a response
    of the default sizes always fits), then the ids' measured sizes.

    >>> audit, dropped, problem = fit_response(["a"] * 100, [], [], ["a"] * 5000)
    >>> len(audit), dropped, problem
    (5000, False, None)
    >>> fit_response(["a"] * 100, [], [], ["\\x00" * 128] * 5000)  # 5000 x 770 bytes
    ([], True, None)
    """
    for measure in (False, True):
        if response_bytes_bound(items, scored, negatives, audit, measure=measure) <= MAX_RESPONSE_BYTES:
            return audit, False, None
    if response_bytes_bound(items, scored, negatives, measure=True) <= MAX_RESPONSE_BYTES:
        return [], bool(audit), None
    return [], False, TOO_LARGE


class VectorLRU:
    """Item id -> vector, least recently used evicted first, stored as rows of one matrix.

    One contiguous float32 matrix (allocated on the first insert, when the width is known) lets a
    request gather its 1000 vectors with one fancy-index copy instead of stacking 1000 arrays;
    recency is a tick per row, updated for all hits at once, so a lookup is one C-level ``map``.

    >>> lru = VectorLRU(capacity=2)
    >>> lru.put_many(["a", "b"], np.eye(2, dtype=np.float32))
    >>> slots = lru.slots(["b", "x"])
    >>> slots.tolist(), lru.gather(slots[:1]).tolist()
    ([1, -1], [[0.0, 1.0]])
    >>> lru.put_many(["c"], np.ones((1, 2), dtype=np.float32))  # evicts "a", the least recent
    >>> lru.slots(["a", "c"]).tolist()
    [-1, 0]
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.clear()

    def __len__(self) -> int:
        return len(self._slot_of)

    def clear(self) -> None:
        self._slot_of: dict[str, int] = {}
        self._id_of: list[str | None] = []
        self._matrix: np.ndarray | None = None
        self._last_used = np.zeros(max(self.capacity, 0), dtype=np.int64)
        self._tick = 0

    def slots(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row of each id in the matrix, -1 where absent; hits become most recent."""
        found = self._slots_of(item_ids)
        self._tick += 1
        self._last_used[found[found >= 0]] = self._tick
        return found

    def gather(self, slots: np.ndarray) -> np.ndarray:
        if self._matrix is None:
            return np.zeros((len(slots), 0), dtype=np.float32)
        return self._matrix[slots]

    def put_many(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        if self.capacity <= 0 or len(item_ids) == 0:
            return
        if self._matrix is None or self._matrix.shape[1] != vectors.shape[1]:
            self.clear()
            self._matrix = np.zeros((self.capacity, vectors.shape[1]), dtype=np.float32)
        self._tick += 1
        slots = self._slots_of(item_ids)
        self._last_used[slots[slots >= 0]] = self._tick  # ids already cached are not eviction victims
        for k in np.flatnonzero(slots < 0).tolist():  # only new ids need a slot (and maybe an eviction)
            item_id = item_ids[k]
            if item_id not in self._slot_of:  # an id repeated in this call got one already
                slot = self._free_slot()
                self._slot_of[item_id] = slot
                self._id_of[slot] = item_id
                self._last_used[slot] = self._tick
        # Resolve again: only a call larger than the capacity evicts its own ids, and those are
        # left out. One scatter (an id repeated in a call carries the same vector each time).
        slots = self._slots_of(item_ids)
        kept = slots >= 0
        self._matrix[slots[kept]] = vectors[kept]

    def _slots_of(self, item_ids: Sequence[str]) -> np.ndarray:
        return np.fromiter(map(self._slot_of.get, item_ids, repeat(-1)), dtype=np.int64, count=len(item_ids))

    def _free_slot(self) -> int:
        if len(self._id_of) < self.capacity:
            self._id_of.append(None)
            return len(self._id_of) - 1
        slot = int(np.argmin(self._last_used))
        del self._slot_of[self._id_of[slot]]
        return slot


class ResidentVectors:
    """A version's published item vectors in process: one matrix of the stored dtype and an id index.

    ``matrix`` has shape ``(len(ids), dim)``; float16 halves the memory the gather reads (20,000 x
    512 is 20 MB) and is widened to float32 only for the rows a request gathers.

    The index is the sorted array of the ids' hashes (the rows are stored in that order): a
    request's 1000 lookups are one ``map(hash)`` and one ``searchsorted`` over 160 KB, where a dict
    touched every key string it compared, scattered over the heap (half the time, measured). An
    absent id matches a member only if their 64-bit (keyed, per-process) hashes collide: a chance
    of ``len(ids) / 2**64`` per lookup, 1e-15 for 20,000 items. Members whose hashes collide are
    looked up exactly, in a dict.

    >>> resident = ResidentVectors(["a", "b"], np.eye(2, dtype=np.float16))
    >>> rows = resident.rows(["b", "x"])
    >>> (rows >= 0).tolist(), resident.gather(rows[:1]).tolist()
    ([True, False], [[0.0, 1.0]])
    """

    def __init__(self, ids: Sequence[str], rows: np.ndarray) -> None:
        if rows.ndim != 2 or rows.shape[0] != len(ids):
            raise ValueError(f"{rows.shape} rows for {len(ids)} ids")
        hashes = np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids))
        order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[order]
        self.matrix = torch.from_numpy(rows[order])  # a copy: the bulk read's buffer is read-only
        collide = np.flatnonzero(np.diff(self._hashes) == 0) if len(ids) > 1 else np.zeros(0, dtype=np.int64)
        self._exact = None
        if len(collide):  # the same id twice, or two ids of one hash: exact lookups for this version
            self._exact = {ids[k]: row for row, k in enumerate(order.tolist())}

    def __len__(self) -> int:
        return len(self._hashes)

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row of each id, -1 where the version did not publish it; int64 ``(len(item_ids),)``."""
        if self._exact is not None:
            return np.fromiter(map(self._exact.get, item_ids, repeat(-1)), dtype=np.int64, count=len(item_ids))
        wanted = np.fromiter(map(hash, item_ids), dtype=np.int64, count=len(item_ids))
        if len(self._hashes) == 0:
            return np.full(len(item_ids), -1, dtype=np.int64)
        found = np.searchsorted(self._hashes, wanted)
        found[found == len(self._hashes)] = 0
        return np.where(self._hashes[found] == wanted, found, -1)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """float32 ``(len(rows), dim)``: the rows, widened."""
        return self.matrix.index_select(0, torch.from_numpy(rows)).float().numpy()


@dataclass(frozen=True)
class ServingVersion:
    """Everything a request reads of one version: swapped in whole by :meth:`Scorer.refresh`."""

    version: int
    model: object
    resident: ResidentVectors
    computed: VectorLRU  # vectors of items the version did not publish, computed once each
    dtype: str


class Scorer:
    """Answers score requests with the version it holds.

    Parameters
    ----------
    store
        A :class:`funnel.store.ModelStore`.
    load_model
        Turns a version's exported weights into the served model
        (:meth:`models.served.ServedStudent.from_bytes`).
    computed_items
        Capacity of each version's LRU of computed vectors (items outside the published set).
    catalog
        The worker's :class:`funnel.catalog.ItemCatalog` (a private one over ``store`` if omitted).
    """

    def __init__(
        self,
        store,
        load_model: Callable[[bytes], object],
        *,
        computed_items: int = 50_000,
        max_candidates: int = 5000,
        max_k: int = 1000,
        easy_negatives: int = 20,
        audit_every: int = 20,
        catalog: ItemCatalog | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog if catalog is not None else ItemCatalog(store)
        self.load_model = load_model
        self.computed_items = computed_items
        self.max_candidates = max_candidates
        self.max_k = max_k
        self.easy_negatives = easy_negatives
        self.audit_every = audit_every
        self.serving: ServingVersion | None = None
        self.stage_s: dict[str, float] = dict.fromkeys(SCORER_STAGES, 0.0)
        self.redis_ok = True
        self._rejected: set[int] = set()
        self._refreshing = threading.Lock()

    @property
    def version(self) -> int | None:
        serving = self.serving
        return None if serving is None else serving.version

    @property
    def model(self):
        serving = self.serving
        return None if serving is None else serving.model

    # --- version management ---------------------------------------------------------------
    def install(self, version: int, model, item_ids: Sequence[str] = (), rows: np.ndarray | None = None,
                dtype: str = "float16") -> ServingVersion:
        """Serve ``model`` as ``version`` with these published vectors, from the next request on."""
        if rows is None:
            rows = np.zeros((len(item_ids), int(model.config.output_dim)), dtype=dtype)
        serving = ServingVersion(version, model, ResidentVectors(item_ids, rows), VectorLRU(self.computed_items),
                                 dtype)
        self.serving = serving  # one assignment: a request holds the old version or this one
        return serving

    def refresh(self) -> bool:
        """Switch to the store's current version if it changed; True when switched.

        Reads the version whole (weights, meta, every vector block) and builds it before the swap:
        meant to run off the request path (the agent runs it in a thread every 0.5 s).
        """
        with self._refreshing:
            try:
                current = self.store.current_version()
                if current is None or current == self.version or current in self._rejected:
                    self.redis_ok = True
                    return False
                weights = self.store.weights(current)
                meta = self.store.meta(current)
                published = None if meta is None else self.store.version_vectors(current, meta)
                self.redis_ok = True
            except RedisUnavailable as exc:
                self._redis_failed(exc)
                return False
            except ValueError as exc:  # blocks that do not fit the meta: a corrupt version
                log.error("model version %d rejected, still serving %s: %s", current, self.version, exc)
                self._rejected.add(current)
                return False
            if weights is None or published is None:  # expired between the reads: the next check
                return False
            try:
                model = self.load_model(weights)
                ids, rows = published
                if len(ids) and rows.shape[1] != int(model.config.output_dim):
                    raise ValueError(f"vectors of {rows.shape[1]} dims for a model of {model.config.output_dim}")
            except ValueError as exc:  # a corrupt or foreign version: keep serving the current one
                log.error("model version %d rejected, still serving %s: %s", current, self.version, exc)
                self._rejected.add(current)
                return False
            self.install(current, model, ids, rows, meta.get("dtype", "float16"))
            log.info("scorer switched to model version %d (%d resident vectors)", current, len(ids))
            return True

    def _redis_failed(self, exc: Exception) -> None:
        if self.redis_ok:
            log.warning("redis unavailable, serving from the local tier: %s", exc)
        self.redis_ok = False

    # --- scoring --------------------------------------------------------------------------
    def validate(self, request: ScoreRequest) -> str | None:
        if len(request.candidates) > self.max_candidates:
            return f"too many candidates: {len(request.candidates)} > {self.max_candidates}"
        if request.k > self.max_k:
            return f"k too large: {request.k} > {self.max_k}"
        return None

    def score(self, request: ScoreRequest, user: UserFeatures) -> ScoreResponse:
        return self.score_many([request], [user])[0]

    def score_many(self, requests: Sequence[ScoreRequest], users: Sequence[UserFeatures]) -> list[ScoreResponse]:
        """One response per request, all from one version; the user tower runs once for the batch.

        ``stage_s`` accumulates the seconds spent per stage (user tower, item vectors, product and
        top-k, response), for the CPU breakdown the scorer agent exports.
        """
        started = time.perf_counter()
        if self.serving is None:  # nothing to serve yet: the first version is read in the request
            self.refresh()
        serving = self.serving  # one version for the whole batch
        problems = [self.validate(request) for request in requests]
        if serving is None:
            problems = [problem or "no model version published yet" for problem in problems]
        valid = [i for i, problem in enumerate(problems) if problem is None]
        vectors, offsets = serving.model.user_vectors_and_offsets([users[i] for i in valid]) if valid else (None, None)
        towers_done = time.perf_counter()
        self.stage_s["user_tower"] += towers_done - started
        responses = [
            ScoreResponse(request_id=request.request_id, user_id=request.user_id, error=problem,
                          model_version=self.version or -1) if problem is not None else None
            for request, problem in zip(requests, problems)
        ]
        for row, i in enumerate(valid):
            responses[i] = self._answer(serving, requests[i], vectors[row], float(offsets[row]), started)
        return responses

    def _answer(self, serving: ServingVersion, request: ScoreRequest, user_vector: np.ndarray, user_offset: float,
                started: float) -> ScoreResponse:
        clock = time.perf_counter()
        candidates = request.candidates
        vectors, tiers, unknown = self._item_vectors(serving, candidates)
        clock = self._lap("item_vectors", clock)
        logits = np.asarray(serving.model.logits_from_vectors(user_vector, vectors, user_offset), dtype=np.float32)
        best = top_k(logits, request.k)
        clock = self._lap("product_top_k", clock)
        top = best.tolist()
        item_scores = self._item_scores(request, logits)
        negatives = self._easy_negatives(request, best)
        audit, audit_dropped, problem = fit_response(
            [candidates[i] for i in top], list(item_scores), negatives,
            list(candidates) if self._audited(request) else [],
        )
        if problem is not None:
            log.warning("request %.64s refused: %s", request.request_id, problem)
            return ScoreResponse(request_id=request.request_id, user_id=request.user_id, error=problem,
                                 model_version=serving.version)
        response = ScoreResponse(
            item_scores=item_scores, negatives=negatives, audit_candidates=audit, audit_dropped=audit_dropped,
            request_id=request.request_id, user_id=request.user_id,
            # plain dicts, validated into ScoredItem by pydantic's core in one pass: about half
            # the time of constructing 100 models one by one
            items=[{"item_id": candidates[i], "score": score} for i, score in zip(top, logits[best].tolist())],
            model_version=serving.version, latency_ms=(time.perf_counter() - started) * 1000,
            cache_tiers=tiers, unknown_items=unknown, degraded=[] if self.redis_ok else [REDIS_DOWN],
        )
        self._lap("response", clock)
        return response

    def _lap(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.stage_s[stage] += now - since
        return now

    @staticmethod
    def _item_scores(request: ScoreRequest, logits: np.ndarray) -> dict[str, float]:
        if not request.score_items:
            return {}
        position = {item_id: i for i, item_id in enumerate(request.candidates)}
        return {item: float(logits[position[item]]) for item in request.score_items if item in position}

    def _audited(self, request: ScoreRequest) -> bool:
        """1 in ``audit_every`` requests (by request id) ships its whole candidate set, so the fine
        ranker can score all of it and measure consistency online."""
        return self.audit_every > 0 and zlib.crc32(request.request_id.encode()) % self.audit_every == 0

    def _easy_negatives(self, request: ScoreRequest, best: np.ndarray) -> list[str]:
        """A seeded sample of the candidates outside the top-k: the joiner's easy negatives."""
        if self.easy_negatives <= 0 or len(request.candidates) <= len(best):
            return []
        outside = np.ones(len(request.candidates), dtype=bool)
        outside[best] = False
        rest = np.flatnonzero(outside).tolist()
        # random.Random: seeding and sampling 20 of 900 take ~20 us against ~33 us with numpy's.
        rng = random.Random(zlib.crc32(request.request_id.encode()))
        picks = rng.sample(rest, min(self.easy_negatives, MAX_NEGATIVES, len(rest)))
        return [request.candidates[i] for i in sorted(picks)]

    def _item_vectors(self, serving: ServingVersion, item_ids: Sequence[str]) -> tuple[np.ndarray, dict[str, int], int]:
        """float32 ``(len(item_ids), dim)`` vectors, the count per tier and the unknown items."""
        rows = serving.resident.rows(item_ids)
        missing = np.flatnonzero(rows < 0)
        if len(missing) == 0:
            return serving.resident.gather(rows), {"local": len(item_ids), "computed": 0}, 0
        vectors = np.empty((len(item_ids), int(serving.model.config.output_dim)), dtype=np.float32)
        hit = rows >= 0
        if hit.any():
            vectors[hit] = serving.resident.gather(rows[hit])
        slots = serving.computed.slots([item_ids[i] for i in missing])
        cached = slots >= 0
        if cached.any():
            vectors[missing[cached]] = serving.computed.gather(slots[cached])
        todo = missing[~cached]
        unknown = 0
        if len(todo):
            features, unknown = self._features([item_ids[i] for i in todo])
            vectors[todo] = np.asarray(serving.model.item_vectors(features), dtype=np.float32)
            serving.computed.put_many([item_ids[i] for i in todo], vectors[todo])
        return vectors, {"local": len(item_ids) - len(todo), "computed": len(todo)}, unknown

    def _features(self, item_ids: list[str]) -> tuple[list[ItemFeatures], int]:
        """Catalog features for items the version lacks; bare ids (fallback rows) if unknown."""
        if self.redis_ok:
            try:
                return self.catalog.lookup(item_ids)
            except RedisUnavailable as exc:
                self._redis_failed(exc)
        return self.catalog.lookup(item_ids, fetch=False)
