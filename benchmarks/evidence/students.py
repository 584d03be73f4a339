"""Students: the models trained with each method's batches (identical across methods).

* :class:`FrozenHeadStudent` — frozen all-MiniLM-L6-v2 features + a trainable 2-layer
  projection head per side (query head, target head), symmetric InfoNCE, τ = 0.05. Cheap:
  many seeds. Each head is residual, ``x + W2·gelu(W1·x)`` with ``W2`` zero-initialised, so
  training starts from the teacher's embeddings (as a fine-tune does) and the heads learn
  the correction; 384 → 512 → 384, so the teacher features can seed the recorded refresh.
* :class:`FineTuneStudent` — all-MiniLM-L6-v2 fully fine-tuned with sentence-transformers'
  ``MultipleNegativesRankingLoss`` (scale 20 = τ 0.05; query → positives and hard negatives),
  short sequences. Costly on a CPU: few steps, few seeds.
* :class:`DigitsStudent` — a small CNN + projection head, SimCLR NT-Xent (τ = 0.1) on two
  augmented views of sklearn's digits; evaluated by kNN accuracy on the encoder features.

Every student exposes the same small interface used by :mod:`.train`:
``step(ids, negatives) -> (loss, query_emb, target_emb)``, ``embed(ids) -> (Q, T)`` (no grad,
the GCBS refresh pass over training samples), ``evaluate(split) -> dict`` and
``train_embeddings() -> (Q, T)`` (for the loss-gap measurement).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hardbatch.losses import false_negative_mask

TEMPERATURE = 0.05


def info_nce(
    queries: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
    temperature: float = TEMPERATURE,
    batch_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch, with optional extra negative targets.

    Parameters
    ----------
    queries, targets : Tensor of shape (b, d), unit-norm
        Row i of each is a positive pair.
    negatives : Tensor of shape (h, d), optional
        Extra (mined) targets, added to every query's candidates (query → target direction).
    negative_mask : Tensor of shape (b, h), bool, optional
        True where negative j must not count for query i (it is query i's own positive).
    batch_mask : Tensor of shape (b, b), bool, optional
        True where in-batch target j must not count as a negative of query i (and query i not
        as one of target j): the false-negative filter of the ablation. Diagonal False.
    """
    logits = queries @ targets.T / temperature  # (b, b)
    if batch_mask is not None:
        logits = logits.masked_fill(batch_mask, -float("inf"))
    labels = torch.arange(len(queries), device=queries.device)
    q2t_logits = logits
    if negatives is not None and len(negatives):
        extra = queries @ negatives.T / temperature
        if negative_mask is not None:
            extra = extra.masked_fill(negative_mask, -float("inf"))
        q2t_logits = torch.cat([logits, extra], dim=1)
    return (F.cross_entropy(q2t_logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def teacher_suspects(
    teacher_queries: torch.Tensor, teacher_targets: torch.Tensor, threshold: float
) -> torch.Tensor:
    """(b, b + h) bool: target j is a teacher-suspected false negative of query i.

    ``s(q_i, t_j) > threshold · s(q_i, t_i)`` on unit-norm teacher features (NV-Retriever's
    "TopK-PercPos" rule), never the positive: :func:`hardbatch.losses.false_negative_mask`'s
    relative rule, which applies only to rows whose positive the teacher scores > 0. Targets:
    the b in-batch ones, then any mined negatives.
    """
    scores = teacher_queries @ teacher_targets.T
    return false_negative_mask(scores=scores, rule="relative", margin=threshold)


def retrieval_metrics(queries: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """MRR and recall@1/10 of query i retrieving target i among all targets of the split."""
    q = torch.as_tensor(queries, dtype=torch.float32)
    t = torch.as_tensor(targets, dtype=torch.float32)
    q, t = F.normalize(q, dim=1), F.normalize(t, dim=1)
    ranks = []
    for start in range(0, len(q), 1024):
        sim = q[start : start + 1024] @ t.T
        pos = sim[torch.arange(len(sim)), torch.arange(start, start + len(sim))]
        ranks.append((sim > pos[:, None]).sum(1) + 1)
    rank = torch.cat(ranks).double()
    return {
        "mrr": float((1 / rank).mean()),
        "recall@1": float((rank <= 1).double().mean()),
        "recall@10": float((rank <= 10).double().mean()),
    }


class ResidualHead(nn.Module):
    """``x + W2·gelu(W1·x + b1) + b2``; ``W2``, ``b2`` start at zero (the identity map)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.inner[2].weight)
        nn.init.zeros_(self.inner[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


class FrozenHeadStudent:
    """Projection heads on frozen MiniLM features.

    Parameters
    ----------
    features : dict split -> (Fq, Ft)
        Unit-norm frozen features, np.ndarray of shape (n_split, 384) each.
    seed : int
        Seeds the head initialisation.
    hidden : int
    lr : float
        AdamW learning rate.
    fn_filter : bool
        The ablation's false-negative filter: drop an in-batch or mined negative target ``j``
        of query ``i`` when the teacher scores it above ``fn_threshold`` times the teacher's
        score of the positive (``s(q_i, t_j) > fn_threshold · s(q_i, t_i)``; NV-Retriever's
        "TopK-PercPos" rule). The features are the teacher's, so this costs one b×b product.
    fn_threshold : float
        Also used, filter or not, to count such pairs (``fn_pairs`` of ``neg_pairs``).
    """

    name = "frozen"
    temperature = TEMPERATURE

    def __init__(
        self,
        features: dict,
        *,
        seed: int,
        hidden: int = 512,
        lr: float = 1e-3,
        fn_filter: bool = False,
        fn_threshold: float = 0.95,
    ):
        self.fn_filter = bool(fn_filter)
        self.fn_threshold = float(fn_threshold)
        self.fn_pairs = 0
        self.neg_pairs = 0
        self.features = {
            s: (torch.as_tensor(q), torch.as_tensor(t)) for s, (q, t) in features.items()
        }
        dim = self.features["train"][0].shape[1]
        self.dim = dim
        torch.manual_seed(seed)
        self.q_head = ResidualHead(dim, hidden)
        self.t_head = ResidualHead(dim, hidden)
        params = [*self.q_head.parameters(), *self.t_head.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)

    def _q(self, x):
        return F.normalize(self.q_head(x), dim=1)

    def _t(self, x):
        return F.normalize(self.t_head(x), dim=1)

    def step(self, ids: np.ndarray, negatives: np.ndarray | None):
        """One optimisation step on batch ``ids`` (and extra negative target ids)."""
        fq, ft = self.features["train"]
        idx = torch.as_tensor(ids)
        fq_batch, ft_batch = fq[idx], ft[idx]
        q, t = self._q(fq_batch), self._t(ft_batch)
        neg = mask = None
        flat = None if negatives is None else torch.as_tensor(negatives.reshape(-1))
        ft_all = ft_batch if flat is None else torch.cat([ft_batch, ft[flat]])
        # Teacher-suspected false negatives: a "negative" the teacher scores nearly as high as
        # (or higher than) the query's own positive.
        suspects = teacher_suspects(fq_batch, ft_all, self.fn_threshold)
        b = len(idx)
        suspect = suspects[:, :b]
        self.fn_pairs += int(suspect.sum())
        self.neg_pairs += b * (b - 1)
        if flat is not None:
            neg = self._t(ft_all[b:])
            mask = flat[None, :] == idx[:, None]
            if self.fn_filter:
                mask = mask | suspects[:, b:]
        batch_mask = suspect if self.fn_filter else None
        loss = info_nce(q, t, neg, mask, batch_mask=batch_mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item(), q.detach(), t.detach()

    @torch.no_grad()
    def embed(self, ids: np.ndarray, split: str = "train"):
        fq, ft = self.features[split]
        idx = torch.as_tensor(ids)
        return self._q(fq[idx]), self._t(ft[idx])

    def train_embeddings(self):
        n = len(self.features["train"][0])
        q, t = self.embed(np.arange(n))
        return q.numpy(), t.numpy()

    def evaluate(self, split: str) -> dict[str, float]:
        n = len(self.features[split][0])
        q, t = self.embed(np.arange(n), split)
        return retrieval_metrics(q.numpy(), t.numpy())


class FineTuneStudent:
    """all-MiniLM-L6-v2 fully fine-tuned with ``MultipleNegativesRankingLoss``.

    Parameters
    ----------
    texts : dict split -> (queries, targets), lists of str
    seed : int
    max_seq_length : int
        Short sequences keep a CPU step at a few seconds.
    lr : float
    """

    name = "finetune"
    temperature = TEMPERATURE

    def __init__(self, texts: dict, *, seed: int, max_seq_length: int = 64, lr: float = 2e-5):
        from sentence_transformers.sentence_transformer.losses import (
            MultipleNegativesRankingLoss,
        )

        from .features import load_minilm

        torch.manual_seed(seed)
        self.texts = texts
        self.model = load_minilm(max_seq_length)
        self.loss_fn = MultipleNegativesRankingLoss(self.model, scale=1 / TEMPERATURE)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr)
        get_dim = getattr(self.model, "get_embedding_dimension", None)
        self.dim = (get_dim or self.model.get_sentence_embedding_dimension)()

    def _forward(self, texts: list[str]) -> torch.Tensor:
        prepare = getattr(self.model, "preprocess", None) or self.model.tokenize
        features = prepare(texts)
        device = self.model.device
        features = {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}
        return self.model(features)["sentence_embedding"]

    def step(self, ids: np.ndarray, negatives: np.ndarray | None):
        self.model.train()
        qs, ts = self.texts["train"]
        q = self._forward([qs[i] for i in ids])
        t = self._forward([ts[i] for i in ids])
        columns = [q, t]
        if negatives is not None:
            # One column of negatives per mined slot: MNRL contrasts each query with all.
            for j in range(negatives.shape[1]):
                columns.append(self._forward([ts[i] for i in negatives[:, j]]))
        loss = self.loss_fn.compute_loss_from_embeddings(columns, None)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item(), q.detach(), t.detach()

    @torch.no_grad()
    def embed(self, ids: np.ndarray, split: str = "train"):
        qs, ts = self.texts[split]
        kw = dict(batch_size=64, convert_to_tensor=True, normalize_embeddings=True)
        q = self.model.encode([qs[i] for i in ids], show_progress_bar=False, **kw)
        t = self.model.encode([ts[i] for i in ids], show_progress_bar=False, **kw)
        return q.cpu(), t.cpu()

    def train_embeddings(self):
        q, t = self.embed(np.arange(len(self.texts["train"][0])))
        return q.numpy(), t.numpy()

    def evaluate(self, split: str) -> dict[str, float]:
        q, t = self.embed(np.arange(len(self.texts[split][0])), split)
        return retrieval_metrics(q.numpy(), t.numpy())


class _ConvNet(nn.Module):
    def __init__(self, width: int = 32, feat: int = 128, out: int = 64):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * 16, feat),
            nn.ReLU(),
        )
        self.projector = nn.Sequential(nn.Linear(feat, feat), nn.ReLU(), nn.Linear(feat, out))

    def forward(self, x):
        return F.normalize(self.projector(self.encoder(x)), dim=1)


class DigitsStudent:
    """SimCLR on digits: views ``(X, Y)`` are set per epoch by :meth:`set_views`.

    Parameters
    ----------
    digits : data_digits.Digits
    seed : int
    temperature : float
    """

    name = "digits"

    def __init__(self, digits, *, seed: int, temperature: float = 0.1, lr: float = 1e-3):
        torch.manual_seed(seed)
        self.digits = digits
        self.temperature = temperature
        self.net = _ConvNet()
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=1e-4)
        self.dim = 64
        self.views: tuple[torch.Tensor, torch.Tensor] | None = None

    def set_views(self, x: np.ndarray, y: np.ndarray) -> None:
        self.views = (torch.as_tensor(x)[:, None], torch.as_tensor(y)[:, None])

    def step(self, ids: np.ndarray, negatives: np.ndarray | None):
        self.net.train()
        idx = torch.as_tensor(ids)
        vx, vy = self.views
        if negatives is None:
            out = self.net(torch.cat([vx[idx], vy[idx]]))
            q, t = out[: len(idx)], out[len(idx) :]
            neg = mask = None
        else:
            flat = torch.as_tensor(negatives.reshape(-1))
            out = self.net(torch.cat([vx[idx], vy[idx], vy[flat]]))
            q, t, neg = out[: len(idx)], out[len(idx) : 2 * len(idx)], out[2 * len(idx) :]
            mask = flat[None, :] == idx[:, None]
        loss = info_nce(q, t, neg, mask, temperature=self.temperature)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item(), q.detach(), t.detach()

    @torch.no_grad()
    def embed(self, ids: np.ndarray, split: str = "train"):
        self.net.eval()
        idx = torch.as_tensor(ids)
        vx, vy = self.views
        return self.net(vx[idx]), self.net(vy[idx])

    def train_embeddings(self):
        q, t = self.embed(np.arange(len(self.views[0])))
        return q.numpy(), t.numpy()

    @torch.no_grad()
    def evaluate(self, split: str = "test", k: int = 5) -> dict[str, float]:
        """kNN (k = 5, cosine, majority vote) accuracy of the encoder features."""
        self.net.eval()
        d = self.digits
        ref = F.normalize(self.net.encoder(torch.as_tensor(d.train_images)[:, None]), dim=1)
        qry = F.normalize(self.net.encoder(torch.as_tensor(d.test_images)[:, None]), dim=1)
        top = (qry @ ref.T).topk(k, dim=1).indices.numpy()
        votes = d.train_labels[top]
        pred = np.array([np.bincount(v, minlength=10).argmax() for v in votes])
        return {"knn_acc": float((pred == d.test_labels).mean())}
