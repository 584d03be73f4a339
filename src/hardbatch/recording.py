"""Recording: training-time embeddings kept by sample index, and the batches they belong to.

``refresh="recorded"`` (:mod:`hardbatch.refresh`) plans the next epoch from the embeddings the
training step already computed. :class:`EmbeddingRecorder` keeps the latest query/target
embedding of every sample; :class:`BatchTracker` remembers, in order, which sample ids each
handed-out batch holds, so that a loss wrapper that sees only features can tell whose
embeddings it computed.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .distributed import torch_ddp as ddp
from .validation import check_positive_int


def to_numpy_rows(a: Any, name: str) -> np.ndarray:
    """An (n, d) float32 numpy copy of a tensor/array (detached, on the CPU)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float32).numpy()
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got shape {a.shape}")
    return a


# ---------------------------------------------------------------------------------- recorder
class EmbeddingRecorder:
    """The latest training-time query/target embedding of every sample, by sample index.

    Feed it from the training loop (``recorder.record(idx, q_emb, t_emb)``), from
    :class:`hardbatch.sentence_transformers.RecordingLoss`, or from
    :meth:`hardbatch.HardBatchSampler.record`; the sampler plans the next epoch from
    :meth:`embeddings`.

    Parameters
    ----------
    n_samples : int
        N, the number of samples (rows).

    Attributes
    ----------
    queries_, targets_ : np.ndarray of shape (N, d), float32, or None
        Latest embeddings (allocated at the first record; d is taken from it).
    stamps_ : np.ndarray of shape (N,), int64
        When each row was last written (a counter; ``-1``: never). Under DDP the newest stamp
        wins when the ranks' recordings are merged (:meth:`synchronize`).
    """

    def __init__(self, n_samples: int) -> None:
        self.n_samples = check_positive_int(n_samples, "n_samples")
        self.queries_: np.ndarray | None = None
        self.targets_: np.ndarray | None = None
        self.stamps_ = np.full(self.n_samples, -1, dtype=np.int64)
        self._clock = 0
        self._synced_clock = -1

    # ------------------------------------------------------------------ writing
    def _allocate(self, dim: int) -> None:
        self.queries_ = np.zeros((self.n_samples, dim), dtype=np.float32)
        self.targets_ = np.zeros((self.n_samples, dim), dtype=np.float32)

    def record(self, indices: Any, query_embeddings: Any, target_embeddings: Any) -> None:
        """Store the embeddings of samples ``indices`` (rows in the same order).

        Parameters
        ----------
        indices : array-like of int, shape (b,)
            Sample ids (dataset indices) of the rows.
        query_embeddings, target_embeddings : tensor or array of shape (b, d)
            Detached and copied to host memory as float32; gradients are not kept.
        """
        idx = np.asarray(
            indices.detach().cpu().numpy() if isinstance(indices, torch.Tensor) else indices,
            dtype=np.int64,
        ).ravel()
        q = to_numpy_rows(query_embeddings, "query_embeddings")
        t = to_numpy_rows(target_embeddings, "target_embeddings")
        if len(q) != len(idx) or len(t) != len(idx):
            raise ValueError(
                f"record() got {len(idx)} indices but {len(q)} query and {len(t)} target rows"
            )
        if q.shape[1] != t.shape[1]:
            raise ValueError(
                f"query and target embeddings differ in dimension: {q.shape[1]} vs {t.shape[1]}"
            )
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_samples):
            raise ValueError(
                f"indices must be in [0, {self.n_samples}), got {idx.min()}..{idx.max()}"
            )
        if self.queries_ is None:
            self._allocate(q.shape[1])
        elif q.shape[1] != self.queries_.shape[1]:
            raise ValueError(
                f"embedding dimension changed: recorder holds d={self.queries_.shape[1]}, "
                f"got d={q.shape[1]}"
            )
        self.queries_[idx] = q
        self.targets_[idx] = t
        self._clock += 1
        self.stamps_[idx] = self._clock

    def set_all(self, queries: Any, targets: Any) -> None:
        """Initialise every row (e.g. from an initial embedding pass); stamps become 0."""
        q = to_numpy_rows(queries, "queries")
        t = to_numpy_rows(targets, "targets")
        if len(q) != self.n_samples or len(t) != self.n_samples:
            raise ValueError(
                f"initial embeddings must have N={self.n_samples} rows, got {len(q)} and {len(t)}"
            )
        self._allocate(q.shape[1])
        self.queries_[:] = q
        self.targets_[:] = t
        self.stamps_[:] = 0
        self._clock = max(self._clock, 0)

    # ------------------------------------------------------------------ reading
    @property
    def known(self) -> np.ndarray:
        """Bool mask (N,): rows that hold an embedding."""
        return self.stamps_ >= 0

    @property
    def n_known(self) -> int:
        """Number of samples with an embedding."""
        return int(np.count_nonzero(self.known))

    def embeddings(self, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The (N, d) query and target embeddings to plan from.

        Rows never recorded (e.g. leftovers dropped by ``drop_last`` with no initial pass) get
        a seeded random vector, which places them at random in the plan.

        Raises
        ------
        ValueError
            Nothing was recorded at all.
        """
        if self.queries_ is None:
            raise ValueError("the recorder holds no embeddings yet (nothing was recorded)")
        unknown = np.flatnonzero(~self.known)
        if unknown.size == 0:
            return self.queries_, self.targets_
        rng = np.random.default_rng([int(seed), 0x5EED])
        queries, targets = self.queries_.copy(), self.targets_.copy()
        d = queries.shape[1]
        queries[unknown] = rng.standard_normal((unknown.size, d), dtype=np.float32)
        targets[unknown] = rng.standard_normal((unknown.size, d), dtype=np.float32)
        return queries, targets

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """This process's recordings as plain data (not merged across ranks)."""
        return {
            "queries": self.queries_,
            "targets": self.targets_,
            "stamps": self.stamps_.copy(),
            "clock": self._clock,
            "synced_clock": self._synced_clock,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        stamps = np.asarray(state["stamps"], dtype=np.int64)
        if stamps.shape != (self.n_samples,):
            raise ValueError(
                f"recorder state holds {stamps.shape[0]} samples, this recorder N={self.n_samples}"
            )
        for name in ("queries", "targets"):
            if state[name] is not None:
                state[name] = np.array(state[name], dtype=np.float32)
        self.queries_, self.targets_ = state["queries"], state["targets"]
        self.stamps_ = stamps.copy()
        self._clock, self._synced_clock = int(state["clock"]), int(state["synced_clock"])

    # ------------------------------------------------------------------ DDP
    def synchronize(self) -> None:
        """Merge the recordings of all ranks (no-op outside ``torch.distributed``).

        Every rank records only the samples it trained on; after this call every rank holds
        the newest embedding of every sample (newest stamp wins; equal stamps are averaged).
        Only rows written since the last synchronisation travel. Collective: call it on every
        rank.
        """
        if ddp.world_size() <= 1:
            return
        dim = ddp.all_reduce_max_int(-1 if self.queries_ is None else self.queries_.shape[1])
        if dim < 0:
            return  # nobody recorded anything
        if self.queries_ is None:
            self._allocate(dim)
        newest = ddp.all_reduce_max_array(self.stamps_)
        changed = np.flatnonzero(newest > self._synced_clock)
        if changed.size:
            owner = (self.stamps_[changed] == newest[changed]).astype(np.float32)
            owners = ddp.all_reduce_sum_array(owner)
            for rows in (self.queries_, self.targets_):
                block = rows[changed] * owner[:, None]
                total = ddp.all_reduce_sum_array(block)
                rows[changed] = total / np.maximum(owners, 1)[:, None]
        self.stamps_ = newest
        self._clock = int(newest.max(initial=0))
        self._synced_clock = self._clock

    def __repr__(self) -> str:
        d = None if self.queries_ is None else self.queries_.shape[1]
        return f"EmbeddingRecorder(n_samples={self.n_samples}, dim={d}, known={self.n_known})"


# ---------------------------------------------------------------------------------- tracker
class BatchTracker:
    """First-in first-out queue of the batches handed to this process, for loss-side recording.

    A loss wrapper does not see sample indices, only features. The sampler pushes every batch
    this process will train on, in order; the wrapper pops one per training batch. DataLoader
    prefetching and gradient accumulation keep the order, so the queue stays aligned as long
    as every pushed batch reaches the loss once, in order (the queue is cleared at each epoch
    start). Each entry carries the recorder of the sampler that yielded it, so one queue can
    serve several samplers (a ``DatasetDict``).

    Parameters
    ----------
    num_replicas, rank : int
        When the batch stream is sharded downstream (accelerate gives batch ``j`` to rank
        ``j % num_replicas``), only this rank's batches are kept.
    """

    def __init__(self, num_replicas: int = 1, rank: int = 0) -> None:
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self._queue: deque[tuple[EmbeddingRecorder, np.ndarray]] = deque()
        self._position = 0
        self._discard = 0
        self.mismatches_ = 0
        #: Batches popped (trained on) since the epoch start.
        self.popped_ = 0

    def reset(self) -> None:
        """Forget queued batches (epoch start; a pending :meth:`discard` stays)."""
        self._queue.clear()
        self._position = 0
        self.popped_ = self._discard

    def discard(self, n_batches: int) -> None:
        """Do not queue this rank's first ``n_batches`` batches of the epoch: a resumed epoch
        hands out again the batches trained before the checkpoint, which the trainer skips."""
        self._discard = int(n_batches)
        self.popped_ = int(n_batches)

    def push(self, recorder: EmbeddingRecorder, batch: Sequence[int]) -> None:
        """A batch was handed out (in stream order)."""
        if self._position % self.num_replicas == self.rank:
            if self._discard:
                self._discard -= 1
            else:
                self._queue.append((recorder, np.asarray(batch, dtype=np.int64)))
        self._position += 1

    def pop(self, batch_size: int) -> tuple[EmbeddingRecorder, np.ndarray] | None:
        """The oldest queued batch, if it has ``batch_size`` samples; else ``None``.

        A size mismatch means the queue lost alignment (e.g. an unusual batch sharding); the
        queue is then cleared and recording resumes at the next epoch, with a warning.
        """
        if not self._queue:
            return None
        recorder, batch = self._queue.popleft()
        self.popped_ += 1
        if len(batch) != batch_size:
            self.mismatches_ += 1
            self._queue.clear()
            warnings.warn(
                f"hardbatch: the training batch has {batch_size} samples but the next batch the "
                f"sampler handed out has {len(batch)}; embedding recording is paused until the "
                "next epoch",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        return recorder, batch

    def __len__(self) -> int:
        return len(self._queue)


__all__ = ["BatchTracker", "EmbeddingRecorder", "to_numpy_rows"]
