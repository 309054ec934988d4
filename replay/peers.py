"""The peers a user would pick, as arms of the offline funnel: Vowpal Wabbit and river LR-FTRL.

Both learn logistic regression on one target (``long_view`` by default) over the same hashed or
coded one-hot ids, built by :class:`PeerFeatures`: user / item / author / tags / tab / hour / the
last 20 watched items, with the crosses user x item, context (tab, hour) x item and history x
item. They are log learners (``learns_from_log = True``): the funnel feeds them every logged
exposure from the log's start, right after the request is scored (progressive: score, then
learn), the same events the fine ranker learns, instead of the funnel's cascade samples.

* :class:`VowpalWabbitArm`: ``vowpalwabbit.Workspace`` in process, text examples, one
  ``learn`` per exposure. A request's candidates are parsed as one multi-line text and predicted
  example by example (3.6 us a candidate on a quiet machine; ``Workspace.predict(str)`` per
  candidate costs 12.6 us for the same number, see the tests).
* :class:`RiverFTRLArm`: ``river.linear_model.LogisticRegression(optimizer=FTRLProximal(...))``;
  river itself learns every exposure (``learn_one``). ``predict_proba_one`` costs 37-53 us a
  candidate with the feature dict (53 ms a request of 1000 in the full run: ~59 min for its 66,768
  replayed requests), so scoring reads river's own weights back after each ``learn_one`` and sums
  them vectorised over the candidates (``intercept + sum w[k]``, what river's ``_raw_dot_one``
  computes for 0/1 features; 0.6-1.2 ms a request). Every ``check_every``-th request is also
  scored with ``predict_proba_one``; the report gives the largest probability difference (0.0
  over 668 requests of the full run) and river's own cost per request on that slice.

>>> from models.features import ItemFeatures, UserFeatures
>>> features = PeerFeatures(n_history=2)
>>> user = UserFeatures("u 1", tab=2, hour=21, history_items=("i1", "i2", "i3"))
>>> features.user_tokens(user)
{'u': ('u_1',), 'c': ('tab2', 'hour21'), 'h': ('i2', 'i3')}
>>> features.item_tokens(ItemFeatures("i9", author_id="a:1", tags=("t1", "t1", "t2")))
{'i': ('i9',), 'a': ('a_1',), 't': ('t1', 't2')}
>>> features.vw_text(features.user_tokens(user))
'|u u_1 |c tab2 hour21 |h i2 i3'
"""

from __future__ import annotations

import base64
import json
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from models.features import UNKNOWN_LABEL, ItemFeatures, RequestSample, UserFeatures
from replay.arms import _Timed

USER_NAMESPACES = ("u", "c", "h")
ITEM_NAMESPACES = ("i", "a", "t")
CROSSES: tuple[tuple[str, str], ...] = (("u", "i"), ("c", "i"), ("h", "i"))
"""user x item, context (tab, hour) x item, history x item."""

_VW_UNSAFE = str.maketrans({c: "_" for c in " \t\n\r|:"})


@dataclass(frozen=True)
class PeerFeatures:
    """One-hot tokens per namespace: ``u`` user, ``c`` tab and hour, ``h`` last watched items,
    ``i`` item, ``a`` author, ``t`` tags (deduplicated). Tokens are safe in VW's text format."""

    n_history: int = 20

    def user_tokens(self, user: UserFeatures) -> dict[str, tuple[str, ...]]:
        history = user.history_items[-self.n_history :] if self.n_history else ()
        return {
            "u": (_safe(user.user_id),),
            "c": (f"tab{user.tab}", f"hour{user.hour}"),
            "h": tuple(_safe(i) for i in history),
        }

    def item_tokens(self, item: ItemFeatures) -> dict[str, tuple[str, ...]]:
        return {
            "i": (_safe(item.item_id),),
            "a": (_safe(item.author_id),) if item.author_id else (),
            "t": tuple(dict.fromkeys(_safe(t) for t in item.tags)),
        }

    @staticmethod
    def vw_text(tokens: Mapping[str, Sequence[str]]) -> str:
        """``|ns tok tok |ns ...``; empty namespaces are left out."""
        return " ".join(f"|{ns} {' '.join(values)}" for ns, values in tokens.items() if values)


def _safe(token: str) -> str:
    return str(token).translate(_VW_UNSAFE)


def exposures(samples: Sequence[RequestSample], label: str):
    """``(user, item, y)`` for every exposed item of ``samples`` (the items with feedback), in order."""
    for sample in samples:
        labels = getattr(sample, label)
        for item, y in zip(sample.items, labels):
            if y != UNKNOWN_LABEL:
                yield sample.user, item, int(y)


class _PeerArm(_Timed):
    """Shared parts: the catalog's item tokens, the label, the log-learner flag and timings."""

    learns_from_log = True

    def __init__(self, name: str, catalog: Sequence[ItemFeatures], label: str, features: PeerFeatures) -> None:
        super().__init__()
        if label not in ("click", "long_view", "like"):
            raise ValueError(f"label must be click, long_view or like, got {label!r}")
        self.name = name
        self.label = label
        self.features = features
        self._catalog = tuple(catalog)
        self.exposures_learned = 0
        self.positives_learned = 0

    def learn(self, samples: Sequence[RequestSample]) -> None:
        start = time.perf_counter()
        for user, item, y in exposures(samples, self.label):
            self._learn_one(user, item, y)
            self.exposures_learned += 1
            self.positives_learned += y
        self.learn_s += time.perf_counter() - start
        self.samples_learned += len(samples)

    def _learn_one(self, user: UserFeatures, item: ItemFeatures, y: int) -> None:
        raise NotImplementedError

    def _counts(self) -> dict[str, int]:
        return {"exposures_learned": self.exposures_learned, "positives_learned": self.positives_learned,
                "samples_learned": self.samples_learned}

    def _set_counts(self, counts: Mapping[str, int]) -> None:
        self.exposures_learned, self.positives_learned = counts["exposures_learned"], counts["positives_learned"]
        self.samples_learned = counts["samples_learned"]

    def report(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = self.timing()
        out.update(label=self.label, exposures_learned=self.exposures_learned,
                   positives_learned=self.positives_learned,
                   learn_us_per_exposure=1e6 * self.learn_s / max(1, self.exposures_learned),
                   score_s=self.score_s, learn_s=self.learn_s)  # fmt: skip
        return out


class VowpalWabbitArm(_PeerArm):
    """Vowpal Wabbit logistic regression, hashed one-hot namespaces and quadratic interactions.

    ``-l 0.2`` was the best of 0.05 / 0.1 / 0.2 / 0.5 (VW's default) / 1.0 on KuaiRand-Pure with the
    log cut before 05-04 and 05-02 .. 05-03 evaluated (long-view AUC 0.735 against 0.731 at 0.5);
    ``-b 26`` or the crosses user x author, history x author and history x tags did not help there.
    river's FTRL ``alpha`` 0.05 (its default) was the best of 0.02 / 0.03 / 0.05 / 0.1 / 0.2 likewise.
    """

    def __init__(
        self,
        catalog: Sequence[ItemFeatures],
        name: str = "vowpal_wabbit",
        label: str = "long_view",
        features: PeerFeatures = PeerFeatures(),
        bits: int = 24,
        learning_rate: float = 0.2,
        extra_args: str = "",
        seed: int = 0,
    ) -> None:
        import vowpalwabbit
        from vowpalwabbit import pyvw

        super().__init__(name, catalog, label, features)
        interactions = " ".join(f"--interactions {a}{b}" for a, b in CROSSES)
        self.args = (
            f"--loss_function logistic -b {bits} -l {learning_rate} {interactions} "
            f"--random_seed {seed} --quiet {extra_args}"
        ).strip()
        self.learning_rate = learning_rate
        self.vw = vowpalwabbit.Workspace(self.args, enable_logging=False)
        self._lib = pyvw.pylibvw.vw
        self._item_text = [" " + features.vw_text(features.item_tokens(item)) for item in self._catalog]
        self.version = vowpalwabbit.__version__

    def _user_text(self, user: UserFeatures) -> str:
        return self.features.vw_text(self.features.user_tokens(user))

    def score(self, user: UserFeatures, indices: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        head, texts = self._user_text(user), self._item_text
        # one parse for the whole candidate set; every parsed example is predicted and finished
        examples = self.vw._parse("\n".join([head + texts[i] for i in np.asarray(indices).tolist()]))
        predict, finish, vw = self._lib.predict, self._lib._finish_example, self.vw
        out = np.empty(len(examples), dtype=np.float64)
        for j, example in enumerate(examples):
            predict(vw, example)
            out[j] = example.get_simplelabel_prediction()
            finish(vw, example)
        self.score_s += time.perf_counter() - start
        self.requests_scored += 1
        return out

    def score_text(self, user: UserFeatures, item: ItemFeatures) -> float:
        """The same score through the public ``Workspace.predict(str)``, one example (for checks)."""
        return float(self.vw.predict(self._user_text(user) + " " + self.features.vw_text(self.features.item_tokens(item))))

    def _learn_one(self, user: UserFeatures, item: ItemFeatures, y: int) -> None:
        tokens = self.features
        self.vw.learn(f"{1 if y else -1} {self._user_text(user)} {tokens.vw_text(tokens.item_tokens(item))}")

    def report(self) -> dict[str, float | int | str]:
        return {**super().report(), "vw_args": self.args, "vw_version": self.version}

    def save(self, path: str | PathLike[str]) -> None:
        """One JSON file: VW's own model (base64; it keeps the adaptive state, so learning goes on
        as if never saved) and what rebuilds the arm. One file, so a caller can replace it atomically."""
        with tempfile.TemporaryDirectory() as folder:
            self.vw.save(f"{folder}/model.vw")
            model = base64.b64encode(Path(f"{folder}/model.vw").read_bytes()).decode()
        Path(path).write_text(json.dumps({
            "kind": "vowpal_wabbit", "name": self.name, "label": self.label, "n_history": self.features.n_history,
            "learning_rate": self.learning_rate, "counts": self._counts(), "model": model,
        }))

    def reloaded(self, path: str | PathLike[str]) -> VowpalWabbitArm:
        """A copy of this arm (same catalog) holding what :meth:`save` wrote to ``path``."""
        state = _read_state(path, "vowpal_wabbit")
        arm = VowpalWabbitArm(self._catalog, name=state["name"], label=state["label"],
                              features=PeerFeatures(state["n_history"]), learning_rate=state["learning_rate"])
        arm.vw.finish()
        import vowpalwabbit

        with tempfile.TemporaryDirectory() as folder:
            Path(f"{folder}/model.vw").write_bytes(base64.b64decode(state["model"]))
            # the model holds the bits and interactions; the loss and the learning rate are not kept in it
            arm.vw = vowpalwabbit.Workspace(
                f"-i {folder}/model.vw --loss_function logistic -l {state['learning_rate']} --quiet", enable_logging=False)
        arm._set_counts(state["counts"])
        return arm

    def close(self) -> None:
        self.vw.finish()


class _CrossRow:
    """The cross weights of one user-side code: item code -> river's weight, in growing arrays."""

    __slots__ = ("slot", "cols", "vals")

    def __init__(self) -> None:
        self.slot: dict[int, int] = {}
        self.cols = np.zeros(4, dtype=np.int64)
        self.vals = np.zeros(4, dtype=np.float64)

    def set(self, col: int, value: float) -> None:
        k = self.slot.get(col)
        if k is None:
            k = self.slot[col] = len(self.slot)
            if k >= len(self.cols):
                self.cols = np.concatenate([self.cols, np.zeros_like(self.cols)])
                self.vals = np.concatenate([self.vals, np.zeros_like(self.vals)])
            self.cols[k] = col
        self.vals[k] = value


class RiverFTRLArm(_PeerArm):
    """river ``LogisticRegression`` with ``optim.FTRLProximal`` over coded one-hot ids and crosses.

    Feature keys are ints: a token ``ns=value`` gets a code (``< 2**31``) the first time it is
    seen; a cross of a user-side code ``a`` and an item code ``b`` is ``(a + 1) << 32 | b``.
    Scoring adds, per candidate, the weights of its single codes (an array over codes) and of its
    crosses with the user's codes (each user-side code's row scattered over item codes).
    """

    def __init__(
        self,
        catalog: Sequence[ItemFeatures],
        name: str = "river_lr_ftrl",
        label: str = "long_view",
        features: PeerFeatures = PeerFeatures(),
        alpha: float = 0.05,
        beta: float = 1.0,
        l1: float = 0.0,
        l2: float = 1.0,
        check_every: int = 100,
    ) -> None:
        from river import linear_model, optim

        super().__init__(name, catalog, label, features)
        if check_every < 0:
            raise ValueError(f"check_every must be >= 0, got {check_every}")
        self.hyper = {"alpha": alpha, "beta": beta, "l1": l1, "l2": l2}
        self.model = linear_model.LogisticRegression(optimizer=optim.FTRLProximal(**self.hyper))
        self.check_every = check_every
        self._codes: dict[str, int] = {"": 0}  # code 0: padding, never learned
        self._single = np.zeros(1 << 16, dtype=np.float64)  # river's weight of each single code
        self._rows: dict[int, _CrossRow] = {}  # river's weights of the crosses, by user-side code
        self._scratch = np.zeros(1 << 16, dtype=np.float64)
        self._index = {item.item_id: k for k, item in enumerate(self._catalog)}
        item_codes = [self._item_codes(item) for item in self._catalog]
        width = max((len(c) for c in item_codes), default=1)
        self._item_singles = np.zeros((len(item_codes), max(1, width)), dtype=np.int64)
        for k, codes in enumerate(item_codes):
            self._item_singles[k, : len(codes)] = codes
        self._item_code = np.asarray([c[0] for c in item_codes], dtype=np.int64)
        self.check_requests = 0
        self.check_max_abs_diff = 0.0
        self.check_score_s = 0.0
        self.check_candidates = 0

    # ------------------------------------------------------------------ features
    def _code(self, token: str) -> int:
        code = self._codes.get(token)
        if code is None:
            code = self._codes[token] = len(self._codes)
            if code >= len(self._single):
                self._single = np.concatenate([self._single, np.zeros_like(self._single)])
        return code

    def _item_codes(self, item: ItemFeatures) -> list[int]:
        """Item id first, then author and tags."""
        return [self._code(f"{ns}={v}") for ns, values in self.features.item_tokens(item).items() for v in values]

    def _user_codes(self, user: UserFeatures) -> tuple[list[int], list[int]]:
        """(single codes of the user side, the user-side codes that cross with the item)."""
        tokens = self.features.user_tokens(user)
        singles = [self._code(f"{ns}={v}") for ns, values in tokens.items() for v in values]
        crossing = {a for a, _ in CROSSES}
        crossed = [self._code(f"{ns}={v}") for ns, values in tokens.items() if ns in crossing for v in values]
        return singles, crossed

    def features_of(self, user: UserFeatures, item: ItemFeatures) -> dict[int, float]:
        """river's input for one (user, item): every key with value 1.0."""
        singles, crossed = self._user_codes(user)
        item_codes = self._item_codes(item)
        keys = singles + item_codes + [(a + 1) << 32 | item_codes[0] for a in crossed]
        return dict.fromkeys(keys, 1.0)

    # ------------------------------------------------------------------ arm
    def score(self, user: UserFeatures, indices: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        indices = np.asarray(indices, dtype=np.int64)
        singles, crossed = self._user_codes(user)
        single = self._single
        base = self.model.intercept + float(single[np.unique(singles)].sum())
        logits = base + single[self._item_singles[indices]].sum(axis=1)
        rows = [row for row in map(self._rows.get, set(crossed)) if row is not None]
        if rows:
            if len(self._scratch) < len(self._codes):
                self._scratch = np.zeros(2 * len(self._codes), dtype=np.float64)
            scratch = self._scratch  # zero outside this block
            for row in rows:
                n = len(row.slot)
                scratch[row.cols[:n]] += row.vals[:n]
            logits += scratch[self._item_code[indices]]
            for row in rows:
                scratch[row.cols[: len(row.slot)]] = 0.0
        self.score_s += time.perf_counter() - start
        self.requests_scored += 1
        if self.check_every and self.requests_scored % self.check_every == 1 % self.check_every:
            self._check(user, indices, logits)
        return logits

    def _check(self, user: UserFeatures, indices: np.ndarray, logits: np.ndarray) -> None:
        """river's own ``predict_proba_one`` on this request's candidates, against the vectorised sum."""
        start = time.perf_counter()
        native = np.array([
            self.model.predict_proba_one(self.features_of(user, self._catalog[i]))[True] for i in indices.tolist()
        ])  # fmt: skip
        self.check_score_s += time.perf_counter() - start
        ours = 1.0 / (1.0 + np.exp(-logits))
        self.check_max_abs_diff = max(self.check_max_abs_diff, float(np.max(np.abs(native - ours), initial=0.0)))
        self.check_requests += 1
        self.check_candidates += len(indices)

    def _learn_one(self, user: UserFeatures, item: ItemFeatures, y: int) -> None:
        x = self.features_of(user, item)
        self.model.learn_one(x, bool(y))
        weights = self.model._weights  # river's weights: read back the keys this step touched
        for key in x:
            self._keep_weight(key, weights.get(key, 0.0))

    def _keep_weight(self, key: int, value: float) -> None:
        """The scoring arrays' copy of river's weight of ``key``."""
        if key >> 32:
            row = self._rows.get((key >> 32) - 1)
            if row is None:
                row = self._rows[(key >> 32) - 1] = _CrossRow()
            row.set(key & 0xFFFFFFFF, value)
        else:
            self._single[key] = value

    def save(self, path: str | PathLike[str]) -> None:
        """river's weights and FTRL state (``z``, ``n``), the intercept and the feature codes, as JSON."""
        optimizer = self.model.optimizer
        Path(path).write_text(json.dumps({
            "kind": "river_lr_ftrl", "name": self.name, "label": self.label, "n_history": self.features.n_history,
            "hyper": self.hyper, "check_every": self.check_every, "counts": self._counts(),
            "codes": list(self._codes), "intercept": self.model.intercept,
            "weights": list(dict(self.model._weights).items()), "z": list(optimizer.z.items()),
            "n": list(optimizer.n.items()), "n_iterations": optimizer.n_iterations,
        }))

    def reloaded(self, path: str | PathLike[str]) -> RiverFTRLArm:
        """A copy of this arm (same catalog) holding what :meth:`save` wrote to ``path``."""
        from collections import defaultdict

        from river import utils

        state = _read_state(path, "river_lr_ftrl")
        arm = RiverFTRLArm(self._catalog, name=state["name"], label=state["label"],
                           features=PeerFeatures(state["n_history"]), check_every=state["check_every"], **state["hyper"])
        for token in state["codes"]:  # the catalog's codes come first in both, in catalog order
            arm._code(token)
        if list(arm._codes) != state["codes"]:
            raise ValueError(f"{path}: its feature codes do not match this catalog")
        weights = {int(key): float(value) for key, value in state["weights"]}
        arm.model._weights = utils.VectorDict(weights)
        arm.model.intercept = float(state["intercept"])
        optimizer = arm.model.optimizer
        optimizer.z = defaultdict(float, {int(k): float(v) for k, v in state["z"]})
        optimizer.n = defaultdict(float, {int(k): float(v) for k, v in state["n"]})
        optimizer.n_iterations = int(state["n_iterations"])
        for key, value in weights.items():
            arm._keep_weight(key, value)
        arm._set_counts(state["counts"])
        return arm

    def report(self) -> dict[str, float | int | str]:
        out = super().report()
        out.update({f"ftrl_{k}": v for k, v in self.hyper.items()})
        out.update(
            river_check_requests=self.check_requests,
            river_check_max_abs_diff_proba=self.check_max_abs_diff if self.check_requests else math.nan,
            river_native_score_ms_per_request=1e3 * self.check_score_s / max(1, self.check_requests),
            river_native_score_us_per_candidate=1e6 * self.check_score_s / max(1, self.check_candidates),
            river_weights=sum(len(row.slot) for row in self._rows.values()) + int(np.count_nonzero(self._single)),
        )
        return out


def _read_state(path: str | PathLike[str], kind: str) -> dict:
    try:
        state = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a peer's state file ({error})") from error
    if state.get("kind") != kind:
        raise ValueError(f"{path}: expected a {kind!r} peer, got {state.get('kind')!r}")
    return state


class PeerRanker:
    """A peer behind the :class:`~models.protocol.Ranker` calls the streaming replay's evaluator
    makes (``score(user, items)``, ``learn_many``, ``save``), over the dataset's catalog; the
    evaluator restores it with :meth:`reloaded` (the catalog is not in the file).

    >>> from models.features import ItemFeatures, UserFeatures
    >>> catalog = [ItemFeatures("i1"), ItemFeatures("i2")]
    >>> peer = PeerRanker(RiverFTRLArm(catalog, check_every=0), catalog)
    >>> peer.score(UserFeatures("u"), catalog[::-1]).shape
    (2,)
    """

    def __init__(self, arm: _PeerArm, catalog: Sequence[ItemFeatures]) -> None:
        self.arm = arm
        self._catalog = tuple(catalog)
        self._index = {item.item_id: k for k, item in enumerate(self._catalog)}

    def score(self, user: UserFeatures, items: Sequence[ItemFeatures]) -> np.ndarray:
        try:
            indices = np.fromiter((self._index[item.item_id] for item in items), dtype=np.int64, count=len(items))
        except KeyError as missing:
            raise ValueError(f"item {missing} is not in the peer's catalog") from None
        return np.asarray(self.arm.score(user, indices), dtype=np.float32)

    def learn_many(self, samples: Sequence[RequestSample]) -> dict[str, float]:
        self.arm.learn(samples)
        return {"loss": math.nan}

    def save(self, path: str | PathLike[str]) -> None:
        self.arm.save(path)

    def reloaded(self, path: str | PathLike[str]) -> PeerRanker:
        return PeerRanker(self.arm.reloaded(path), self._catalog)


def new_peers(catalog: Sequence[ItemFeatures], seed: int = 0) -> dict[str, PeerRanker]:
    """Vowpal Wabbit and river LR-FTRL as the replay's evaluator runs them, configured as in bench quality."""
    return {"vowpal_wabbit": PeerRanker(VowpalWabbitArm(catalog, seed=seed), catalog),
            "river_lr_ftrl": PeerRanker(RiverFTRLArm(catalog), catalog)}
