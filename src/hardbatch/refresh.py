"""Refresh: where a sampler gets the embeddings it re-plans from while a model trains.

Methods such as GCBS plan from the *current* model's embeddings, which change as the model
trains. :class:`hardbatch.HardBatchSampler` offers three refresh policies (``refresh=``):

``"epoch"`` (the GCBS paper's)
    At the start of every epoch, a no-grad forward pass over the whole training set
    (:func:`embed_pass`) gives fresh embeddings; the epoch is planned from them. Exact at the
    start of the epoch, but the pass costs extra time: 24–38% of an epoch in the GCBS paper
    (Tables 5–6), i.e. roughly one third of the training forward passes again.

``"recorded"`` (no extra forward pass)
    The training forward pass already computes every sample's query and target embedding.
    An :class:`EmbeddingRecorder` keeps, by sample index, the latest embeddings seen in
    training (``record(indices, q_emb, t_emb)``, called from the training loop, a loss wrapper
    or a hook), and the next epoch is planned from them. Cost: one device-to-host copy of the
    batch embeddings per step and ``2·N·d`` floats of host memory. Samples not seen yet keep
    their last known embedding (the initial pass, or a random vector when nothing is known).

``"steps"`` (``refresh_every=n``)
    Re-plan every ``n`` batches: the samples not yet used this epoch are re-embedded (no-grad,
    only those) and re-planned, so every sample still appears exactly once per epoch. Fresher
    than ``"epoch"`` at the price of more passes: about ``N·S/(2n)`` extra embeddings per epoch
    of ``S`` batches.

Staleness trade-off
-------------------
A plan is only as good as the embeddings it was made from, and they age while the model
trains. With ``"epoch"`` the embeddings are fresh when the epoch starts and one epoch old by its
end (half an epoch on average). With ``"recorded"`` each sample's embedding was taken when it
was trained on in the previous epoch, before that step's update, in train mode (dropout on):
between half an epoch and two epochs old when used (about one on average), and the similarities
compare embeddings from different moments of training. That is usually fine once training has
settled (fine-tuning, the later epochs), less so in the first epoch of a fast-moving model; the
saving is the whole extra pass. ``"steps"`` bounds the age by ``n`` steps for the remaining
samples, at the cost of more embedding passes and planning runs.
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import ddp
from .validation import check_positive_int

#: Names accepted by ``HardBatchSampler(refresh=...)``.
REFRESH_POLICIES = ("auto", "never", "epoch", "recorded", "steps")

#: ``embed_fn(indices) -> (queries, targets)``: embeddings of the given samples, shape (n, d).
EmbedFn = Callable[[np.ndarray], tuple[Any, Any]]


def to_numpy_rows(a: Any, name: str) -> np.ndarray:
    """An (n, d) float32 numpy copy of a tensor/array (detached, on the CPU)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float32).numpy()
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got shape {a.shape}")
    return a


# ---------------------------------------------------------------------------------- embed pass
def embed_pass(
    embed_fn: EmbedFn,
    indices: np.ndarray,
    *,
    batch_size: int = 256,
    progress: bool | None = None,
    desc: str = "hardbatch: embedding",
) -> tuple[np.ndarray, np.ndarray]:
    """Embed ``indices`` with ``embed_fn`` in batches, without gradients.

    Under ``torch.distributed`` the indices are split across the ranks (contiguous shards),
    each rank embeds its shard and the rows are all-gathered, so every rank returns the same
    full arrays.

    Parameters
    ----------
    embed_fn : callable
        ``embed_fn(idx) -> (queries, targets)``; ``idx`` is an int64 array of sample ids and
        the results are (len(idx), d) arrays or tensors. It should put the model in eval mode
        itself if it wants to (the sampler only disables gradients). Under DDP, call the
        unwrapped model (``ddp_model.module``): the wrapper's forward may run collectives.
    indices : np.ndarray of shape (n,)
        Sample ids to embed, in the order the rows are returned.
    batch_size : int
        At most this many ids per ``embed_fn`` call (the rows are split evenly over the calls).
    progress : bool or None
        Progress bar (rank 0 only); ``None``: only for n >= 10 000.

    Returns
    -------
    queries, targets : np.ndarray of shape (n, d), float32
    """
    indices = np.asarray(indices, dtype=np.int64)
    batch_size = check_positive_int(batch_size, "embed_batch_size")
    world, rank = ddp.world_size(), ddp.rank()
    shards = np.array_split(indices, world)
    local = shards[rank]
    # Every rank makes the same number of embed_fn calls (shards differ by at most one row),
    # so an embed_fn that runs collectives (e.g. a DDP forward syncing buffers) cannot hang.
    n_calls = -(-len(shards[0]) // batch_size)
    chunks = [c for c in np.array_split(local, n_calls) if len(c)] if n_calls else []
    show = (len(indices) >= 10_000 if progress is None else bool(progress)) and rank == 0
    q_parts: list[np.ndarray] = []
    t_parts: list[np.ndarray] = []
    with torch.no_grad(), tqdm(total=len(local), desc=desc, disable=not show, unit="ex") as bar:
        for chunk in chunks:
            q, t = embed_fn(chunk)
            q, t = to_numpy_rows(q, "embed_fn queries"), to_numpy_rows(t, "embed_fn targets")
            if len(q) != len(chunk) or len(t) != len(chunk):
                raise ValueError(
                    f"embed_fn returned {len(q)} query and {len(t)} target rows for "
                    f"{len(chunk)} indices"
                )
            q_parts.append(q)
            t_parts.append(t)
            bar.update(len(chunk))
    queries = np.concatenate(q_parts) if q_parts else None
    targets = np.concatenate(t_parts) if t_parts else None
    if world > 1:
        queries = ddp.all_gather_shards(queries, len(indices))
        targets = ddp.all_gather_shards(targets, len(indices))
    return queries, targets


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
        self.mismatches_ = 0

    def reset(self) -> None:
        """Forget queued batches (epoch start)."""
        self._queue.clear()
        self._position = 0

    def push(self, recorder: EmbeddingRecorder, batch: Sequence[int]) -> None:
        """A batch was handed out (in stream order)."""
        if self._position % self.num_replicas == self.rank:
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


class Stopwatch:
    """Accumulates named durations (seconds) for the sampler's ``history_``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> _Lap:
        return _Lap(self, name)


class _Lap:
    def __init__(self, watch: Stopwatch, name: str) -> None:
        self.watch, self.name = watch, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.start
        self.watch.seconds[self.name] = self.watch.seconds.get(self.name, 0.0) + elapsed
