"""Small ``torch.distributed`` helpers for the sampler (DDP on one or many machines).

Everything here is a no-op (or the identity) when ``torch.distributed`` is not initialised or
has one process, so the sampler code calls them unconditionally. Collectives run on the
backend's device: CUDA for NCCL, CPU otherwise (gloo). Large arrays travel in chunks of
:data:`CHUNK_BYTES` so a collective never needs a second copy of an N×d matrix on the device.

Global vs per-device batch
--------------------------
:class:`hardbatch.HardBatchSampler` plans *global* batches of ``batch_size`` samples and, under
DDP, gives each of the ``W`` ranks a contiguous ``batch_size / W`` slice of every global batch.
A loss that gathers embeddings across devices (e.g. ``gather_across_devices=True`` in
sentence-transformers) sees the whole hard global batch — the B3 authors' "total batch"; a
per-device loss sees its slice, which is still a contiguous piece of the plan (a window of the
GCBS order, or whole B3 clusters when the slice is a multiple of the cluster size).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

#: Largest piece (bytes) of an array sent in one collective.
CHUNK_BYTES = 64 * 2**20


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 outside ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 outside ``torch.distributed``)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def comm_device() -> torch.device:
    """Device the collectives run on: the current CUDA device for NCCL, else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_max_int(value: int) -> int:
    """Maximum of an int over all ranks."""
    if not is_distributed():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _all_reduce_array(a: np.ndarray, op) -> np.ndarray:
    out = np.array(a, copy=True)
    if not is_distributed() or out.size == 0:
        return out
    device = comm_device()
    flat = out.reshape(len(out), -1)  # a view: writing blocks of it fills `out`
    row_bytes = flat.shape[1] * flat.itemsize
    step = max(1, CHUNK_BYTES // max(1, row_bytes))
    for start in range(0, len(flat), step):
        block = flat[start : start + step]
        piece = torch.from_numpy(np.ascontiguousarray(block)).to(device)
        dist.all_reduce(piece, op=op)
        block[...] = piece.cpu().numpy()
    return out


def all_reduce_max_array(a: np.ndarray) -> np.ndarray:
    """Element-wise maximum over all ranks (same shape and dtype on every rank)."""
    return _all_reduce_array(a, dist.ReduceOp.MAX if is_distributed() else None)


def all_reduce_sum_array(a: np.ndarray) -> np.ndarray:
    """Element-wise sum over all ranks (same shape and dtype on every rank)."""
    return _all_reduce_array(a, dist.ReduceOp.SUM if is_distributed() else None)


def all_gather_shards(local: np.ndarray | None, n_total: int) -> np.ndarray:
    """Reassemble rows that were split with ``np.array_split(range(n_total), world)``.

    Rank ``r`` passes its shard (rows ``array_split(...)[r]``, possibly empty: ``None``); every
    rank gets the (n_total, d) concatenation in rank order.
    """
    if not is_distributed():
        return local
    world = dist.get_world_size()
    sizes = [len(s) for s in np.array_split(np.arange(n_total), world)]
    dim = all_reduce_max_int(-1 if local is None or local.size == 0 else local.shape[1])
    if dim < 0:
        raise ValueError("no rank produced any embedding rows to gather")
    if local is None or local.size == 0:
        local = np.zeros((0, dim), dtype=np.float32)
    local = np.ascontiguousarray(local, dtype=np.float32)
    device = comm_device()
    out = np.empty((n_total, dim), dtype=np.float32)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    biggest = max(sizes)
    # Gather row blocks: at block k every rank sends rows [k, k+step) of its own shard.
    step = max(1, CHUNK_BYTES // (4 * dim * world))
    for start in range(0, biggest, step):
        stop = min(start + step, biggest)
        send = torch.zeros((stop - start, dim), dtype=torch.float32)
        mine = local[start:stop]
        send[: len(mine)] = torch.from_numpy(mine)
        send = send.to(device)
        recv = [torch.empty_like(send) for _ in range(world)]
        dist.all_gather(recv, send)
        for r, block in enumerate(recv):
            take = max(0, min(stop, sizes[r]) - start)
            if take:
                out[offsets[r] + start : offsets[r] + start + take] = block[:take].cpu().numpy()
    return out


def broadcast_array(a: np.ndarray | None, src: int = 0) -> np.ndarray:
    """Rank ``src``'s int64 array on every rank (others pass ``None``)."""
    if not is_distributed():
        return a
    device = comm_device()
    if dist.get_rank() == src:
        a = np.ascontiguousarray(a, dtype=np.int64)
        shape = torch.tensor([a.ndim, *a.shape, *([0] * (4 - a.ndim))], dtype=torch.int64)
    else:
        shape = torch.zeros(5, dtype=torch.int64)
    shape = shape.to(device)
    dist.broadcast(shape, src)
    ndim = int(shape[0])
    dims = tuple(int(x) for x in shape[1 : 1 + ndim])
    if dist.get_rank() == src:
        data = torch.from_numpy(a.reshape(-1)).to(device)
    else:
        data = torch.empty(int(np.prod(dims)), dtype=torch.int64, device=device)
    dist.broadcast(data, src)
    return data.cpu().numpy().reshape(dims)


def barrier() -> None:
    """``dist.barrier()`` under DDP, else nothing."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s picklable object on every rank (others may pass ``None``)."""
    if not is_distributed():
        return obj
    box = [obj if dist.get_rank() == src else None]
    device = comm_device() if dist.get_backend() == "nccl" else None
    dist.broadcast_object_list(box, src=src, device=device)
    return box[0]
