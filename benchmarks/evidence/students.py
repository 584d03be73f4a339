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
* :class:`StaticEmbeddingStudent` — all-MiniLM-L6-v2's token-embedding table, trainable, mean
  pooled, then a linear map (the kind of model sentence-transformers trains as
  ``StaticEmbedding``): cheap end-to-end training, many seeds and epochs.
* :class:`TopLayersFineTuneStudent` — MiniLM with the lower layers frozen and their hidden
  states cached once per text; only the top ``k`` layers train (MNRL-equivalent loss).

False-negative control (every student): ``fn_mask=None | "teacher" | "self"`` leaves out of
the loss the negatives :func:`hardbatch.losses.false_negative_mask` marks (``fn_rule``,
``fn_margin``), scored from the frozen teacher features of the batch (``"teacher"``) or from
the student's own detached outputs of the step (``"self"``). :class:`FalseNegativeStats`
counts, per step, the share of pairs masked and (when the teacher is known) the share the
teacher rule would mark ("suspect" pairs), whether masked or not.

Every student exposes the same small interface used by :mod:`.train`:
``step(ids, negatives) -> (loss, query_emb, target_emb)``, ``embed(ids) -> (Q, T)`` (no grad,
the GCBS refresh pass over training samples), ``evaluate(split) -> dict`` and
``train_embeddings() -> (Q, T)`` (for the loss-gap measurement), and ``fn``, its
:class:`FalseNegativeStats`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import hardbatch.losses
from hardbatch.losses import false_negative_mask

TEMPERATURE = 0.05
#: Where a student's false-negative mask is scored from.
FN_MASKS = (None, "teacher", "self")
#: When a mask applies (the arm option ``fn_when``): every epoch, or only epochs of hard batches.
FN_WHEN = ("always", "hard")


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


def rule_mask(
    queries: torch.Tensor, targets: torch.Tensor, rule: str, margin: float
) -> torch.Tensor:
    """(b, b') bool mask of ``rule`` on unit-norm embeddings (scores = plain dot products).

    With ``rule="relative"`` this is :func:`teacher_suspects` (the ablation's filter, bit for
    bit): the embeddings are already unit-norm, so they are not normalised again.
    """
    return false_negative_mask(scores=queries @ targets.T, rule=rule, margin=margin)


class FalseNegativeStats:
    """A student's false-negative option and its per-step counts.

    Parameters
    ----------
    fn_mask : {None, "teacher", "self"}
        Mask nothing, or score the mask from the teacher features of the batch or from the
        student's own detached outputs.
    fn_rule, fn_margin : see :func:`hardbatch.losses.false_negative_mask`
    teacher : (Tq, Tt) np.ndarray / Tensor of shape (n_train, d), unit-norm, optional
        The frozen teacher features of the train split; required for ``fn_mask="teacher"``,
        and used, mask or not, to count the teacher-suspect in-batch pairs.

    Attributes
    ----------
    fn_pairs, neg_pairs : int
        Teacher-suspect in-batch pairs (the teacher scores them under ``fn_rule`` at
        ``fn_margin``) and all in-batch negative pairs, so far.
    step_shares : list of float
        Share of the off-diagonal pairs masked by the rule at each step since the last
        :meth:`pop_epoch`.
    """

    def __init__(self, fn_mask=None, fn_rule="relative", fn_margin=0.95, teacher=None):
        if fn_mask not in FN_MASKS:
            raise ValueError(f"fn_mask must be one of {FN_MASKS}, got {fn_mask!r}")
        if fn_mask == "teacher" and teacher is None:
            raise ValueError("fn_mask='teacher' needs the teacher features (teacher=(Tq, Tt))")
        # Validates the rule and margin once (a bad one fails here, not at the first step).
        hardbatch.losses.false_negative_mask(scores=torch.eye(2), rule=fn_rule, margin=fn_margin)
        self.fn_mask = fn_mask
        self.fn_rule = fn_rule
        self.fn_margin = float(fn_margin)
        self.teacher = (
            None
            if teacher is None
            else tuple(torch.as_tensor(np.asarray(x, dtype=np.float32)) for x in teacher)
        )
        self.fn_pairs = 0
        self.neg_pairs = 0
        self.step_shares: list[float] = []
        #: When the mask applies: "always", or "hard" (only in epochs of hardness > 0).
        self.when = "always"
        self.active = True

    def start_epoch(self, hardness: float) -> None:
        """Called before each epoch with its plan's hardness (0 for random batches):
        ``when="hard"`` turns the mask off for an epoch of random batches."""
        if self.when not in FN_WHEN:
            raise ValueError(f"fn_when must be one of {FN_WHEN}, got {self.when!r}")
        self.active = self.when == "always" or hardness > 0

    def mask(
        self,
        ids: torch.Tensor,
        flat: torch.Tensor | None,
        queries: torch.Tensor,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        """(b, b + h) bool: the pairs to leave out of this step's loss.

        ``ids`` (b,) the batch, ``flat`` (h,) any mined negative ids, ``queries`` (b, d) and
        ``targets`` (b + h, d) the student's outputs (any scale; used for ``"self"``). Always
        left out: a mined negative that is the query's own positive. Records the step's share
        of rule-masked pairs and the teacher-suspect count.
        """
        b = len(ids)
        all_ids = ids if flat is None else torch.cat([ids, flat])
        if self.teacher is not None:
            tq, tt = self.teacher
            suspects = rule_mask(tq[ids], tt[all_ids], self.fn_rule, self.fn_margin)
            self.fn_pairs += int(suspects[:, :b].sum())
        self.neg_pairs += b * (b - 1)
        if not self.active:
            masked = torch.zeros(b, len(all_ids), dtype=torch.bool)
        elif self.fn_mask == "teacher":
            masked = suspects
        elif self.fn_mask == "self":
            masked = hardbatch.losses.false_negative_mask(
                queries.detach(), targets.detach(), rule=self.fn_rule, margin=self.fn_margin
            ).cpu()  # the bookkeeping is on the CPU (a GPU student moves the result back)
        else:
            masked = torch.zeros(b, len(all_ids), dtype=torch.bool)
        off_diagonal = b * len(all_ids) - b
        self.step_shares.append(float(masked.sum()) / off_diagonal if off_diagonal else 0.0)
        if flat is not None:
            masked = masked.clone()
            masked[:, b:] |= flat[None, :] == ids[:, None]
        return masked

    def pop_epoch(self) -> float:
        """Mean masked share over the steps since the last call (NaN if none)."""
        shares, self.step_shares = self.step_shares, []
        return float(np.mean(shares)) if shares else float("nan")

    def summary(self) -> dict:
        """What a run reports: the option and the teacher-suspect share (if counted)."""
        out = {"fn_mask": self.fn_mask, "fn_rule": self.fn_rule, "fn_margin": self.fn_margin}
        if self.when != "always":
            out["fn_when"] = self.when
        if self.teacher is not None and self.neg_pairs:
            out["suspect_fraction"] = self.fn_pairs / self.neg_pairs
        return out


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
        Same as ``fn_mask="teacher"``.
    fn_threshold : float
        Also used, filter or not, to count such pairs (``fn_pairs`` of ``neg_pairs``); the
        margin of ``fn_rule``.
    fn_mask : {None, "teacher", "self"}
        See :class:`FalseNegativeStats` (``"teacher"``: the frozen input features).
    fn_rule : str
        :func:`hardbatch.losses.false_negative_mask`'s rule.
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
        fn_mask: str | None = None,
        fn_rule: str = "relative",
    ):
        if fn_filter and fn_mask not in (None, "teacher"):
            raise ValueError(f"fn_filter=True is fn_mask='teacher', got fn_mask={fn_mask!r}")
        fn_mask = "teacher" if fn_filter else fn_mask
        self.fn_filter = fn_mask == "teacher"
        self.fn_threshold = float(fn_threshold)
        self.features = {
            s: (torch.as_tensor(q), torch.as_tensor(t)) for s, (q, t) in features.items()
        }
        self.fn = FalseNegativeStats(fn_mask, fn_rule, fn_threshold, self.features["train"])
        dim = self.features["train"][0].shape[1]
        self.dim = dim
        torch.manual_seed(seed)
        self.q_head = ResidualHead(dim, hidden)
        self.t_head = ResidualHead(dim, hidden)
        params = [*self.q_head.parameters(), *self.t_head.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)

    @property
    def fn_pairs(self) -> int:
        return self.fn.fn_pairs

    @property
    def neg_pairs(self) -> int:
        return self.fn.neg_pairs

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
        flat = None if negatives is None else torch.as_tensor(negatives.reshape(-1))
        b = len(idx)
        neg = None if flat is None else self._t(ft[flat])
        t_all = t if neg is None else torch.cat([t, neg])
        # Teacher-suspected false negatives (counted always, masked with the option): a
        # "negative" scored nearly as high as (or higher than) the query's own positive.
        masked = self.fn.mask(idx, flat, q, t_all)
        mask = None if flat is None else masked[:, b:]
        batch_mask = masked[:, :b] if self.fn.fn_mask else None
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
    teacher : (Tq, Tt), unit-norm arrays of shape (n_train, d), optional
        Frozen teacher features of the train texts (``fn_mask="teacher"``, suspect counts).
    fn_mask, fn_rule, fn_margin : see :class:`FalseNegativeStats`
        With a mask the loss is :func:`hardbatch.losses.info_nce` (``symmetric=False``, the
        same cross-entropy as MNRL) with the mask; without, MNRL itself.
    device : str
        Where the model trains (``"cuda"``: the recipe's full fine-tune on a GPU); the
        planners, the teacher and the mask's bookkeeping stay on the CPU.
    """

    name = "finetune"
    temperature = TEMPERATURE

    def __init__(
        self,
        texts: dict,
        *,
        seed: int,
        max_seq_length: int = 64,
        lr: float = 2e-5,
        teacher=None,
        fn_mask: str | None = None,
        fn_rule: str = "relative",
        fn_margin: float = 0.95,
        device: str = "cpu",
    ):
        from sentence_transformers.sentence_transformer.losses import (
            MultipleNegativesRankingLoss,
        )

        from .features import load_minilm

        self.fn = FalseNegativeStats(fn_mask, fn_rule, fn_margin, teacher)
        torch.manual_seed(seed)
        self.texts = texts
        self.model = load_minilm(max_seq_length, device=device)
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
        idx = torch.as_tensor(ids)
        # Column-major like MNRL's candidates: all targets, then slot 0's negatives, ...
        flat = None if negatives is None else torch.as_tensor(negatives.T.reshape(-1))
        t_all = torch.cat(columns[1:])
        mask = self.fn.mask(idx, flat, q, t_all).to(q.device)
        if self.fn.fn_mask is None:
            loss = self.loss_fn.compute_loss_from_embeddings(columns, None)
        else:
            loss = hardbatch.losses.info_nce(
                q, t_all, temperature=TEMPERATURE, mask=mask, symmetric=False
            )
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
    fn_mask, fn_rule, fn_margin : see :class:`FalseNegativeStats`
        The "teacher" is the raw pixels (unit-normalised), as for the batch planners.
    """

    name = "digits"

    def __init__(
        self,
        digits,
        *,
        seed: int,
        temperature: float = 0.1,
        lr: float = 1e-3,
        fn_mask: str | None = None,
        fn_rule: str = "relative",
        fn_margin: float = 0.95,
    ):
        n = len(digits.train_images)
        pixels = F.normalize(torch.as_tensor(digits.train_images).reshape(n, -1).float(), dim=1)
        self.fn = FalseNegativeStats(fn_mask, fn_rule, fn_margin, (pixels, pixels))
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
        b = len(idx)
        flat = None if negatives is None else torch.as_tensor(negatives.reshape(-1))
        if flat is None:
            out = self.net(torch.cat([vx[idx], vy[idx]]))
            q, t, neg = out[:b], out[b:], None
        else:
            out = self.net(torch.cat([vx[idx], vy[idx], vy[flat]]))
            q, t, neg = out[:b], out[b : 2 * b], out[2 * b :]
        masked = self.fn.mask(idx, flat, q, out[b:])
        mask = None if flat is None else masked[:, b:]
        batch_mask = masked[:, :b] if self.fn.fn_mask else None
        loss = info_nce(q, t, neg, mask, temperature=self.temperature, batch_mask=batch_mask)
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


# --------------------------------------------------------------------------- static embeddings
def _ragged(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat ids, starts, lengths) of a list of id lists."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    flat = np.fromiter((i for r in rows for i in r), dtype=np.int64, count=int(lengths.sum()))
    return flat, starts, lengths


def _gather(ragged, ids) -> tuple[torch.Tensor, torch.Tensor]:
    """``EmbeddingBag`` input (flat token ids, offsets) of the texts ``ids``."""
    flat, starts, lengths = ragged
    parts = [flat[starts[i] : starts[i] + lengths[i]] for i in ids]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])[:-1]])
    return torch.as_tensor(np.concatenate(parts)), torch.as_tensor(offsets)


class StaticInputs:
    """Token ids of every text (tokenised once) and the MiniLM token table they index.

    The table is cut to the tokens the texts use (ids remapped, order kept): rows no text
    uses never receive a gradient nor count in any score, so the model is the same as with
    the full 30 522-row table, and an optimiser step touches less memory.

    Parameters
    ----------
    texts : dict split -> (queries, targets), lists of str
    max_tokens : int
        Tokens kept per text (WordPiece, no special tokens; an empty text keeps ``[UNK]``).
    model : SentenceTransformer, optional
        all-MiniLM-L6-v2 (loaded offline when not given).

    Attributes
    ----------
    table : Tensor of shape (V, 384)
        MiniLM's ``word_embeddings`` rows of the used tokens.
    tokens : dict split -> (query ragged, target ragged)
    """

    def __init__(self, texts: dict, *, max_tokens: int = 128, model=None):
        from .features import load_minilm

        model = model or load_minilm()
        tokenizer = model.tokenizer
        full = model[0].auto_model.embeddings.word_embeddings.weight.detach()
        unk = tokenizer.unk_token_id
        encoded = {}
        for split, (qs, ts) in texts.items():
            sides = []
            for side in (qs, ts):
                ids = tokenizer(
                    list(side), add_special_tokens=False, truncation=True, max_length=max_tokens
                )["input_ids"]
                sides.append([r or [unk] for r in ids])
            encoded[split] = sides
        used = np.unique(
            np.fromiter((i for q, t in encoded.values() for r in q + t for i in r), np.int64)
        )
        remap = np.full(len(full), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        self.table = full[torch.as_tensor(used)].clone()
        self.max_tokens = max_tokens
        self.tokens = {
            split: tuple(_ragged([remap[np.asarray(r)].tolist() for r in side]) for side in sides)
            for split, sides in encoded.items()
        }

    def n(self, split: str) -> int:
        return len(self.tokens[split][0][1])


class _RowAdam:
    """Adam on the rows of a table that a step used (lazy Adam, like ``torch.optim.SparseAdam``:
    a row's moments decay only when it is used; bias correction by the global step).

    Dense autograd through the whole table cost ~0.3 s a step (gradient and Adam over 3.7 M
    values) and ``SparseAdam`` ~0.3 s (sparse-to-dense adds); gathering the batch's rows into
    a small leaf tensor and updating those rows here costs a few ms.
    """

    def __init__(self, table: torch.Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.table, self.lr, self.betas, self.eps = table, lr, betas, eps
        self.exp_avg = torch.zeros_like(table)
        self.exp_avg_sq = torch.zeros_like(table)
        self.steps = 0

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grad: torch.Tensor) -> None:
        b1, b2 = self.betas
        self.steps += 1
        m = self.exp_avg[rows].mul_(b1).add_(grad, alpha=1 - b1)
        v = self.exp_avg_sq[rows].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        self.exp_avg[rows], self.exp_avg_sq[rows] = m, v
        denom = (v / (1 - b2**self.steps)).sqrt_().add_(self.eps)
        self.table[rows] -= self.lr / (1 - b1**self.steps) * m / denom


class StaticEmbeddingStudent:
    """MiniLM's token-embedding table, trainable, mean pooling and a linear map; end to end.

    One encoder for both sides (queries and targets): like sentence-transformers'
    ``StaticEmbedding``, which is one module, and like the teacher (MiniLM is one encoder); a
    table per side would double the parameters and give each side half the updates. The map
    starts at the identity, so training starts from the pooled MiniLM token vectors.
    Symmetric InfoNCE, τ = 0.05.

    Parameters
    ----------
    inputs : StaticInputs
        The tokenised texts and the initial table (built once per task, shared by runs).
    seed : int
    lr : float
        AdamW learning rate of the map.
    table_lr : float
        Learning rate of the table (``SparseAdam``: each step updates only the rows of the
        batch's tokens; token vectors get few updates each, hence a higher rate).
    teacher : (Tq, Tt), unit-norm, optional
        Frozen teacher features of the train split (``fn_mask="teacher"``, suspect counts).
    fn_mask, fn_rule, fn_margin : see :class:`FalseNegativeStats`
    """

    name = "static"
    temperature = TEMPERATURE

    def __init__(
        self,
        inputs: StaticInputs,
        *,
        seed: int,
        lr: float = 1e-3,
        table_lr: float = 1e-2,
        teacher=None,
        fn_mask: str | None = None,
        fn_rule: str = "relative",
        fn_margin: float = 0.95,
    ):
        self.fn = FalseNegativeStats(fn_mask, fn_rule, fn_margin, teacher)
        torch.manual_seed(seed)
        self.inputs = inputs
        # The token table (float32 copy: trained) and the map, shared by both sides.
        self.table = inputs.table.clone()
        dim = self.table.shape[1]
        self.map = nn.Linear(dim, dim)
        with torch.no_grad():
            self.map.weight.copy_(torch.eye(dim))
            self.map.bias.zero_()
        self.dim = dim
        self.table_optimizer = _RowAdam(self.table, table_lr)
        self.optimizer = torch.optim.AdamW(self.map.parameters(), lr=lr, weight_decay=0.01)

    def _pool(self, table, flat, offsets) -> torch.Tensor:
        return F.normalize(self.map(F.embedding_bag(flat, table, offsets, mode="mean")), dim=1)

    def _encode(self, split: str, side: int, ids) -> torch.Tensor:
        flat, offsets = _gather(self.inputs.tokens[split][side], ids)
        return self._pool(self.table, flat, offsets)

    def step(self, ids: np.ndarray, negatives: np.ndarray | None):
        idx = torch.as_tensor(ids)
        flat = None if negatives is None else torch.as_tensor(negatives.reshape(-1))
        target_ids = ids if negatives is None else np.concatenate([ids, negatives.reshape(-1)])
        fq, oq = _gather(self.inputs.tokens["train"][0], ids)
        ft, ot = _gather(self.inputs.tokens["train"][1], target_ids)
        # Only the rows this batch uses take part: a small leaf, updated by _RowAdam.
        rows, inverse = torch.unique(torch.cat([fq, ft]), return_inverse=True)
        used = self.table[rows].requires_grad_()
        q = self._pool(used, inverse[: len(fq)], oq)
        t_all = self._pool(used, inverse[len(fq) :], ot)
        mask = self.fn.mask(idx, flat, q, t_all)
        loss = hardbatch.losses.info_nce(q, t_all, temperature=TEMPERATURE, mask=mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.table_optimizer.step(rows, used.grad)
        return loss.item(), q.detach(), t_all[: len(ids)].detach()

    @torch.no_grad()
    def embed(self, ids: np.ndarray, split: str = "train"):
        ids = np.asarray(ids)
        qs, ts = [], []
        for start in range(0, len(ids), 4096):
            chunk = ids[start : start + 4096]
            qs.append(self._encode(split, 0, chunk))
            ts.append(self._encode(split, 1, chunk))
        return torch.cat(qs), torch.cat(ts)

    def train_embeddings(self):
        q, t = self.embed(np.arange(self.inputs.n("train")))
        return q.numpy(), t.numpy()

    def evaluate(self, split: str) -> dict[str, float]:
        q, t = self.embed(np.arange(self.inputs.n(split)), split)
        return retrieval_metrics(q.numpy(), t.numpy())


# --------------------------------------------------------------------------- top layers
class LowerStates:
    """Hidden states after MiniLM's lower ``L − k`` layers, computed once per text (float16).

    Parameters
    ----------
    texts : dict split -> (queries, targets)
    top_layers : int
        ``k``: the layers left to train (the lower ``L − k`` are frozen and cached here).
    max_seq_length : int
    model : SentenceTransformer, optional
    cache : bool
        Save / load ``CACHE/lower_<sha1>.npz`` (keyed by the texts, ``k`` and the length).

    Attributes
    ----------
    states : dict split -> (query ragged, target ragged); a ragged side is
        (flat float16 array (tokens, 384), starts, lengths): the real tokens of each text.
    """

    def __init__(
        self,
        texts: dict,
        *,
        top_layers: int = 2,
        max_seq_length: int = 64,
        model=None,
        cache: bool = True,
    ):
        import hashlib

        from .common import CACHE
        from .features import load_minilm

        model = model or load_minilm(max_seq_length)
        model.max_seq_length = max_seq_length
        n_layers = len(model[0].auto_model.encoder.layer)
        if not 1 <= top_layers <= n_layers:
            raise ValueError(f"top_layers must be in [1, {n_layers}], got {top_layers}")
        self.top_layers = top_layers
        self.lower = n_layers - top_layers
        self.max_seq_length = max_seq_length
        h = hashlib.sha1(f"lower/{self.lower}/{max_seq_length}/".encode())
        for split in sorted(texts):
            for side in texts[split]:
                for t in side:
                    h.update(t.encode("utf-8") + b"\0")
        path = CACHE / f"lower_{h.hexdigest()[:16]}.npz"
        if cache and path.exists():
            data = np.load(path)
            self.states = {
                split: tuple(
                    (data[f"{split}{s}_x"], data[f"{split}{s}_starts"], data[f"{split}{s}_len"])
                    for s in (0, 1)
                )
                for split in texts
            }
            return
        self.states = {
            split: tuple(self._encode(model, list(side)) for side in texts[split])
            for split in texts
        }
        if cache:
            CACHE.mkdir(parents=True, exist_ok=True)
            arrays = {}
            for split, sides in self.states.items():
                for s, (x, starts, lengths) in enumerate(sides):
                    arrays.update(
                        {
                            f"{split}{s}_x": x,
                            f"{split}{s}_starts": starts,
                            f"{split}{s}_len": lengths,
                        }
                    )
            np.savez(path, **arrays)

    @torch.no_grad()
    def _encode(self, model, texts: list[str], batch: int = 64):
        bert = model[0].auto_model
        bert.eval()
        chunks, lengths = [], []
        for start in range(0, len(texts), batch):
            prepare = model.preprocess  # sentence-transformers 5.x (tokenize: deprecated)
            features = prepare(texts[start : start + batch])
            am = features["attention_mask"]
            hidden = bert.embeddings(
                input_ids=features["input_ids"], token_type_ids=features.get("token_type_ids")
            )
            mask = _attention_mask(bert, hidden, am)
            for layer in bert.encoder.layer[: self.lower]:
                hidden = layer(hidden, mask)
            for row, n in zip(hidden, am.sum(1).tolist(), strict=True):
                chunks.append(row[:n].to(torch.float16).numpy())
                lengths.append(n)
        lengths = np.asarray(lengths, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return np.concatenate(chunks), starts, lengths

    def batch(self, split: str, side: int, ids) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded float32 hidden states (b, L, 384) and the attention mask (b, L) of ``ids``."""
        x, starts, lengths = self.states[split][side]
        ids = np.asarray(ids)
        width = int(lengths[ids].max())
        hidden = torch.zeros(len(ids), width, x.shape[1])
        am = torch.zeros(len(ids), width, dtype=torch.int64)
        for r, i in enumerate(ids):
            n = int(lengths[i])
            hidden[r, :n] = torch.from_numpy(x[starts[i] : starts[i] + n].astype(np.float32))
            am[r, :n] = 1
        return hidden, am

    def n(self, split: str) -> int:
        return len(self.states[split][0][1])


def _attention_mask(bert, hidden: torch.Tensor, attention_mask: torch.Tensor):
    """The mask BertModel hands its layers (transformers 5.x: ``create_bidirectional_mask``,
    whose format follows the configured attention implementation)."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(
        config=bert.config, inputs_embeds=hidden, attention_mask=attention_mask
    )


class TopLayersFineTuneStudent:
    """MiniLM fine-tuned in its top ``k`` layers, over cached lower-layer hidden states.

    The lower ``L − k`` layers (and the token embeddings) are frozen, so their output for a
    text never changes: :class:`LowerStates` computes it once (eval mode, float16). A step
    runs only the top ``k`` layers (dropout on, as in a fine-tune), mean pooling and the
    normalisation, so it costs about ``k / L`` of a full forward and backward. Loss: MNRL's
    (query → the batch's targets and any mined negatives, scale 20 = τ 0.05) through
    :func:`hardbatch.losses.info_nce` with ``symmetric=False``, with the optional mask.

    Parameters
    ----------
    lower : LowerStates
        Built once per subset (shared by the runs; decides ``k`` and the sequence length).
    seed : int
    lr : float
    teacher : (Tq, Tt), unit-norm, optional
    fn_mask, fn_rule, fn_margin : see :class:`FalseNegativeStats`
    """

    name = "finetune_top"
    temperature = TEMPERATURE

    def __init__(
        self,
        lower: LowerStates,
        *,
        seed: int,
        lr: float = 2e-5,
        teacher=None,
        fn_mask: str | None = None,
        fn_rule: str = "relative",
        fn_margin: float = 0.95,
        model=None,
    ):
        from .features import load_minilm

        self.fn = FalseNegativeStats(fn_mask, fn_rule, fn_margin, teacher)
        torch.manual_seed(seed)
        self.lower = lower
        self.model = model or load_minilm(lower.max_seq_length)
        self.bert = self.model[0].auto_model
        self.top = self.bert.encoder.layer[lower.lower :]
        # Pooling and Normalize: the modules after the transformer, applied as the model does.
        self.heads = list(self.model)[1:]
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self.top.parameters():
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(self.top.parameters(), lr=lr)
        self.dim = self.bert.config.hidden_size

    def _forward(self, split: str, side: int, ids) -> torch.Tensor:
        hidden, am = self.lower.batch(split, side, ids)
        mask = _attention_mask(self.bert, hidden, am)
        for layer in self.top:
            hidden = layer(hidden, mask)
        features = {"token_embeddings": hidden, "attention_mask": am}
        for module in self.heads:
            features = module(features)
        return features["sentence_embedding"]

    def step(self, ids: np.ndarray, negatives: np.ndarray | None):
        self.top.train()
        idx = torch.as_tensor(ids)
        flat = None if negatives is None else torch.as_tensor(negatives.reshape(-1))
        target_ids = ids if negatives is None else np.concatenate([ids, negatives.reshape(-1)])
        q = self._forward("train", 0, ids)
        t_all = self._forward("train", 1, target_ids)
        mask = self.fn.mask(idx, flat, q, t_all)
        loss = hardbatch.losses.info_nce(
            q, t_all, temperature=TEMPERATURE, mask=mask, symmetric=False
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return (
            loss.item(),
            F.normalize(q.detach(), dim=1),
            F.normalize(t_all[: len(ids)].detach(), dim=1),
        )

    @torch.no_grad()
    def embed(self, ids: np.ndarray, split: str = "train"):
        self.top.eval()
        ids = np.asarray(ids)
        qs, ts = [], []
        for start in range(0, len(ids), 128):
            chunk = ids[start : start + 128]
            qs.append(F.normalize(self._forward(split, 0, chunk), dim=1))
            ts.append(F.normalize(self._forward(split, 1, chunk), dim=1))
        return torch.cat(qs), torch.cat(ts)

    def train_embeddings(self):
        q, t = self.embed(np.arange(self.lower.n("train")))
        return q.numpy(), t.numpy()

    def evaluate(self, split: str) -> dict[str, float]:
        q, t = self.embed(np.arange(self.lower.n(split)), split)
        return retrieval_metrics(q.numpy(), t.numpy())
