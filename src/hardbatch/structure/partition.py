"""Partitions of a similarity graph into parts of about equal size (B3's clustering stage).

Two partitioners:

* ``"metis"`` (default, B3's choice): METIS k-way partitioning (``pymetis``) into ``n_parts``
  parts of nearly equal size (METIS's default imbalance tolerance, 3%) minimising the number of
  cut edges. Seeded through ``pymetis.Options(seed=...)``; the graph goes in as a
  ``pymetis.CSRAdjacency`` of the canonical CSR (each undirected edge once per direction, never
  twice as in the authors' code).
* ``"leiden"``: igraph's built-in Leiden community detection with the Constant Potts Model
  (CPM). CPM has no target number of parts; its ``resolution`` ``γ`` is the edge density a
  community must exceed (merging communities of sizes ``a`` and ``b`` pays off when more than
  ``γ·a·b`` edges join them). The default ``γ = mean degree / (16·max_part_size)`` is on
  the low side (communities come out somewhat larger than the cap rather than fragmented:
  fragments must be pooled by the cluster stage, which loses more structure than cutting a
  large community; on planted groups 1/16 beat 1/2, 1/4 and 1/8). Because CPM communities
  can be larger than wanted, the partition is *size capped*: a community above
  ``max_part_size`` (default ``ceil(N / n_parts)``) is cut into consecutive chunks of
  ``max_part_size`` along the reverse Cuthill–McKee order of its own subgraph (neighbours
  stay close in that order, so chunks stay dense). Leiden is near-linear in the number of
  edges and needs no balance, useful where METIS is slow; the resulting number of parts is
  whatever the communities give.

Reproducibility: METIS (as built in ``pymetis``) draws its random numbers from the C
library's process-wide ``rand()``, so another thread calling ``rand()`` while METIS runs
changes the partition, whatever the seed (seen in Ray workers, whose service threads do).
When the process has other threads, METIS therefore runs in a forked single-threaded child
process (POSIX; the graph is shared copy-on-write, only the labels come back), where nothing
else draws from ``rand()``. On platforms without ``fork`` it runs in-process. A child forked
while another thread held a lock (glibc's ``rand()`` lock, say) would wait forever: the parent
watches the child's CPU time and replaces a stalled child (:func:`_in_forked_child`).

Isolated nodes (no edge) are placed by both: METIS spreads them over parts to balance sizes;
Leiden makes each a part of its own (the cluster stage then pools them).
"""

from __future__ import annotations

import math
import os
import pickle
import random
import select
import signal
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import reverse_cuthill_mckee

from ..validation import check_positive_int

PARTITIONERS = ("metis", "leiden")

#: Default CPM resolution of Leiden: mean degree / (LEIDEN_CAP_FACTOR · max part size).
LEIDEN_CAP_FACTOR = 16.0


@dataclass
class Partition:
    """A partition of the ``N`` nodes of a graph.

    Attributes
    ----------
    labels : np.ndarray of shape (N,), int64
        Part of every node, in ``[0, n_parts)``.
    n_parts : int
        Number of parts (METIS: as requested, a part may be empty; Leiden: as found).
    method : str
        ``"metis"`` or ``"leiden"``.
    edge_cut : int
        Undirected edges whose ends lie in different parts.
    n_edges : int
        Undirected edges of the graph.
    """

    labels: np.ndarray
    n_parts: int
    method: str
    edge_cut: int
    n_edges: int

    @property
    def sizes(self) -> np.ndarray:
        """Size of every part, shape ``(n_parts,)``."""
        return np.bincount(self.labels, minlength=self.n_parts)

    def summary(self) -> dict[str, float]:
        """Edge cut and part-size spread, JSON-ready."""
        sizes = self.sizes
        return {
            "method": self.method,
            "n_parts": int(self.n_parts),
            "edge_cut": int(self.edge_cut),
            "edge_cut_fraction": self.edge_cut / self.n_edges if self.n_edges else 0.0,
            "part_size_min": int(sizes.min()) if sizes.size else 0,
            "part_size_max": int(sizes.max()) if sizes.size else 0,
            "part_size_mean": float(sizes.mean()) if sizes.size else 0.0,
            "part_size_std": float(sizes.std()) if sizes.size else 0.0,
        }


def edge_cut(graph: sp.csr_matrix, labels: np.ndarray) -> int:
    """Undirected edges of a symmetric graph whose ends have different labels."""
    graph = sp.csr_matrix(graph)
    rows = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))
    return int(np.count_nonzero(labels[rows] != labels[graph.indices])) // 2


def _canonical(graph: sp.spmatrix) -> sp.csr_matrix:
    """Boolean canonical CSR without diagonal; checks it is square and symmetric."""
    if not sp.issparse(graph):
        raise ValueError(f"graph must be a scipy sparse matrix, got {type(graph).__name__}")
    if graph.shape[0] != graph.shape[1]:
        raise ValueError(f"graph must be square, got shape {graph.shape}")
    pattern = sp.csr_matrix(graph, dtype=np.bool_, copy=True)
    pattern.setdiag(False)  # self loops carry no information for a partition
    pattern.eliminate_zeros()
    pattern.sum_duplicates()
    pattern.sort_indices()
    if (pattern != pattern.T).nnz:
        raise ValueError(
            "graph must be symmetric (undirected); use hardbatch.similarity.symmetrize"
        )
    return pattern


def partition_graph(
    graph: sp.spmatrix,
    n_parts: int,
    *,
    method: str = "metis",
    seed: int | None = 0,
    resolution: float | None = None,
    max_part_size: int | None = None,
) -> Partition:
    """Split an undirected graph into parts of densely connected nodes.

    Parameters
    ----------
    graph : scipy sparse matrix of shape (N, N)
        Symmetric pattern (values ignored; a diagonal is ignored).
    n_parts : int
        METIS: the number of parts, ``1 <= n_parts <= N``. Leiden: only sets the default size
        cap ``ceil(N / n_parts)``.
    method : {"metis", "leiden"}
    seed : int or None
        Seeds METIS (``Options.seed``) or Leiden (igraph's random generator, restored to
        Python's ``random`` module afterwards).
    resolution : float, optional
        Leiden's CPM resolution (see the module docstring for the default).
    max_part_size : int, optional
        Leiden's size cap (default ``ceil(N / n_parts)``).

    Returns
    -------
    Partition
    """
    if method not in PARTITIONERS:
        raise ValueError(f"method must be one of {PARTITIONERS}, got {method!r}")
    pattern = _canonical(graph)
    n = pattern.shape[0]
    if n == 0:
        raise ValueError("graph has no nodes")
    n_parts = check_positive_int(n_parts, "n_parts")
    if n_parts > n:
        raise ValueError(f"n_parts={n_parts} exceeds the {n} nodes of the graph")
    seed = 0 if seed is None else int(seed)
    n_edges = pattern.nnz // 2
    if method == "metis":
        labels = _metis(pattern, n_parts, seed)
        n_found = n_parts
    else:
        cap = math.ceil(n / n_parts) if max_part_size is None else max_part_size
        cap = check_positive_int(cap, "max_part_size")
        labels = _leiden(pattern, seed, resolution, cap)
        n_found = int(labels.max()) + 1
    return Partition(
        labels=labels,
        n_parts=n_found,
        method=method,
        edge_cut=edge_cut(pattern, labels),
        n_edges=n_edges,
    )


def _metis(pattern: sp.csr_matrix, n_parts: int, seed: int, isolate: bool | None = None):
    """METIS labels of ``pattern``; ``isolate`` (default: when other threads exist) runs METIS
    in a forked child process so that no other thread can draw from its ``rand()``."""
    n = pattern.shape[0]
    if n_parts == 1:
        return np.zeros(n, dtype=np.int64)
    if isolate is None:
        isolate = _has_other_threads()
    if isolate and hasattr(os, "fork"):
        return _in_forked_child(_metis_labels, pattern, n_parts, seed)
    return _metis_labels(pattern, n_parts, seed)


def _metis_labels(pattern: sp.csr_matrix, n_parts: int, seed: int) -> np.ndarray:
    import pymetis

    # METIS's own index type (int64 here): then pymetis passes the arrays without copying.
    idx = pymetis.zero_copy_dtype()
    adjacency = pymetis.CSRAdjacency(
        adj_starts=pattern.indptr.astype(idx), adjacent=pattern.indices.astype(idx)
    )
    options = pymetis.Options(seed=seed % 2**31)
    _, parts = pymetis.part_graph(n_parts, adjacency=adjacency, options=options)
    return np.asarray(parts, dtype=np.int64)


def _has_other_threads() -> bool:
    """Whether this process runs other OS threads (native ones included, where knowable)."""
    try:
        return len(os.listdir("/proc/self/task")) > 1
    except OSError:  # no procfs (macOS): assume so, forking is cheap
        return True


#: A forked child whose CPU time has not moved for this many seconds, with no result yet, is
#: deadlocked (module docstring) and is replaced; METIS itself never waits.
CHILD_STALL_S = 10.0
#: Forks tried before METIS runs in-process (with a warning).
CHILD_ATTEMPTS = 3


def _in_forked_child(fn, *args):
    """``fn(*args)`` computed in a forked child process, its result pickled back.

    A fork copies locks in the state other threads hold them: a thread inside ``rand()`` at
    the fork leaves glibc's random lock taken for good in the child, whose METIS then waits
    forever. The parent watches the child's CPU time (Linux ``/proc``); a child idle for
    :data:`CHILD_STALL_S` with no result is killed and the fork retried, and after
    :data:`CHILD_ATTEMPTS` stalls ``fn`` runs in-process with a ``RuntimeWarning`` (its
    partition may then depend on the other threads' ``rand()`` calls).
    """
    import pymetis  # noqa: F401  (imported before the fork: the child only computes)

    for _ in range(CHILD_ATTEMPTS):
        data = _fork_once(fn, args)
        if data is not None:
            break
    else:
        warnings.warn(
            f"METIS's forked child process stalled {CHILD_ATTEMPTS} times (a lock taken by "
            "another thread at the fork); METIS runs in this process instead, where another "
            "thread's rand() calls can change its partition",
            RuntimeWarning,
            stacklevel=4,
        )
        return fn(*args)
    if data[:1] == b"\1":
        raise RuntimeError(f"METIS failed: {pickle.loads(data[1:])}")
    return pickle.loads(data[1:])


def _fork_once(fn, args) -> bytes | None:
    """One forked run of ``fn(*args)``: the child's payload, or None if it stalled."""
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    with warnings.catch_warnings():
        # Python >= 3.12 warns that forking a multi-threaded process may deadlock the child;
        # the child here only runs METIS on memory it already has and exits (and a deadlocked
        # child is detected and replaced).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: compute, write, leave without running any cleanup
        code = 1
        try:
            os.close(read_fd)
            try:
                payload = b"\0" + pickle.dumps(fn(*args), protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException as exc:  # noqa: BLE001  (reported to the parent)
                payload = b"\1" + pickle.dumps(f"{type(exc).__name__}: {exc}")
            with os.fdopen(write_fd, "wb") as out:
                out.write(payload)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks: list[bytes] = []
    cpu, idle_since = _cpu_ticks(pid), time.monotonic()
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while True:
            ready, _, _ = select.select([pipe], [], [], 0.5)
            if ready:
                chunk = pipe.read(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
                idle_since = time.monotonic()
                continue
            now_cpu = _cpu_ticks(pid)
            if now_cpu is None or now_cpu != cpu or chunks:
                cpu, idle_since = now_cpu, time.monotonic()
            elif time.monotonic() - idle_since > CHILD_STALL_S:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None
    _, status = os.waitpid(pid, 0)
    data = b"".join(chunks)
    if not data:
        raise RuntimeError(f"METIS's child process ended without a result (wait status {status})")
    return data


def _cpu_ticks(pid: int) -> int | None:
    """User + system CPU ticks of process ``pid`` (None where ``/proc`` cannot tell)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    except (OSError, IndexError, ValueError):
        return None


def _leiden(pattern: sp.csr_matrix, seed: int, resolution: float | None, cap: int) -> np.ndarray:
    import igraph

    n = pattern.shape[0]
    upper = sp.triu(pattern, k=1).tocoo()
    edges = np.column_stack([upper.row, upper.col]).astype(np.int64)
    if resolution is None:
        mean_degree = pattern.nnz / n
        resolution = max(mean_degree, 1.0) / (LEIDEN_CAP_FACTOR * cap)
    elif not (isinstance(resolution, (int, float)) and resolution > 0):
        raise ValueError(f"resolution must be a positive number, got {resolution!r}")
    graph = igraph.Graph(n=n, edges=edges)
    igraph.set_random_number_generator(random.Random(seed))
    try:
        membership = graph.community_leiden(
            # Two iterations (igraph's default): iterating to convergence took 5x longer on
            # window graphs for a CPM quality 0.03% higher.
            objective_function="CPM",
            resolution=float(resolution),
            n_iterations=2,
        ).membership
    finally:
        igraph.set_random_number_generator(random)
    return _cap_sizes(pattern, np.asarray(membership, dtype=np.int64), cap)


def _cap_sizes(pattern: sp.csr_matrix, labels: np.ndarray, cap: int) -> np.ndarray:
    """Cut communities larger than ``cap`` into chunks of ``cap`` along their RCM order.

    One RCM pass over the graph restricted to intra-community edges orders every community
    (a Leiden community is connected, so it is one component of that graph and stays
    contiguous); a stable sort by community then lists each community in its own RCM order.
    """
    n = pattern.shape[0]
    coo = pattern.tocoo()
    inside = labels[coo.row] == labels[coo.col]
    intra = sp.csr_matrix(
        (np.ones(int(inside.sum()), dtype=np.bool_), (coo.row[inside], coo.col[inside])),
        shape=(n, n),
    )
    order = reverse_cuthill_mckee(intra, symmetric_mode=True).astype(np.int64)
    order = order[np.argsort(labels[order], kind="stable")]
    sorted_labels = labels[order]
    first = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    rank = np.arange(n) - np.repeat(first, np.diff(np.r_[first, n]))
    chunk = rank // cap
    # New part id per (community, chunk), numbered in sorted order.
    new_part = np.r_[True, (sorted_labels[1:] != sorted_labels[:-1]) | (chunk[1:] != chunk[:-1])]
    out = np.empty(n, dtype=np.int64)
    out[order] = np.cumsum(new_part) - 1
    return out
