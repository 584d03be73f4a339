"""Refresh: when a sampler re-plans, and where the embeddings it plans from come from.

Methods such as GCBS plan from the *current* model's embeddings, which change as the model
trains. :class:`hardbatch.HardBatchSampler` asks a **refresh policy** (``refresh=``) for each
epoch's batches; each policy is a small class below, chosen by :func:`make_refresh_policy`:

``"never"`` (:class:`NeverRefresh`)
    One plan — given, or made once from ``embeddings=`` / one ``embed_fn`` pass — and epoch
    ``e`` serves ``plan.for_epoch(e)`` (the method's own per-epoch rule: ``random``
    reshuffles, ``b3`` regroups its clusters, ``gcbs`` keeps its batches).

``"epoch"`` (:class:`EpochRefresh`, the GCBS paper's)
    At the start of every epoch, a no-grad forward pass over the whole training set
    (:func:`hardbatch.planning.embed_pass`) gives fresh embeddings; the epoch is planned from
    them. Exact at the start of the epoch, but the pass costs extra time: 24–38% of an epoch
    in the GCBS paper
    (Tables 5–6), i.e. roughly one third of the training forward passes again.

``"recorded"`` (:class:`RecordedRefresh`, no extra forward pass)
    The training forward pass already computes every sample's query and target embedding.
    An :class:`~hardbatch.recording.EmbeddingRecorder` keeps, by sample index, the latest
    embeddings seen in training (``record(indices, q_emb, t_emb)``, called from the training
    loop, a loss wrapper or a hook), and the next epoch is planned from them. Cost: one
    device-to-host copy of the batch embeddings per step and ``2·N·d`` floats of host memory.
    Samples not seen yet keep their last known embedding (the initial pass, or a random vector
    when nothing is known).

``"steps"`` (:class:`StepsRefresh`, ``refresh_every=n``)
    Re-plan every ``n`` batches: the samples not yet used this epoch are re-embedded (no-grad,
    only those) and re-planned, so every sample still appears exactly once per epoch. Fresher
    than ``"epoch"`` at the price of more passes: about ``N·S/(2n)`` extra embeddings per epoch
    of ``S`` batches.

``"auto"`` (:func:`resolve_refresh`) picks ``"never"`` for a given plan or a method that keeps
its own per-epoch rule (``Planner.replans_each_epoch`` false: ``b3``, ``random``), ``"epoch"``
when an ``embed_fn`` follows the model being trained, else ``"never"`` (plan once from
``embeddings=``). A combination that cannot work raises ``ValueError`` naming the problem.

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

Adding a policy: subclass :class:`RefreshPolicy`, declare its class attributes (``name``,
``replans``, ``needs_embed_fn``, ``records``), implement ``epoch_batches`` (or ``epoch_rows``
for a policy that re-plans inside an epoch), override ``check`` / ``build`` if it refuses
combinations or takes options, and add it to :data:`POLICY_CLASSES`.
"""

from __future__ import annotations

from ..methods.base import Planner
from ..planning import Planning
from ..plans import BatchPlan
from ..recording import EmbeddingRecorder
from .policies import (
    EpochRefresh,
    NeverRefresh,
    RecordedRefresh,
    RefreshPolicy,
    StepsRefresh,
)

#: The policies by ``refresh=`` name.
POLICY_CLASSES: dict[str, type[RefreshPolicy]] = {
    cls.name: cls for cls in (NeverRefresh, EpochRefresh, RecordedRefresh, StepsRefresh)
}

#: Names accepted by ``HardBatchSampler(refresh=...)``.
REFRESH_POLICIES = ("auto", *POLICY_CLASSES)

#: Values of ``initial=`` (the first epoch of ``refresh="recorded"``).
INITIAL_RULES = ("auto", "embed", "random")


# ---------------------------------------------------------------------------------- factory
def resolve_refresh(
    refresh: str | None,
    *,
    method_cls: type[Planner],
    plan_given: bool = False,
    embed_fn_given: bool = False,
    embeddings_given: bool = False,
    embed_fn_follows_model: bool = True,
) -> str:
    """The policy name that ``refresh`` stands for (``"auto"`` resolved), without checks.

    ``"auto"``: ``"never"`` for a given plan or a method with its own per-epoch rule
    (``method_cls.replans_each_epoch`` false); ``"epoch"`` when an ``embed_fn`` follows the
    model being trained; ``"never"`` when the embeddings are fixed (``embeddings=``, or an
    ``embed_fn`` of a fixed teacher: ``embed_fn_follows_model=False``); otherwise
    ``ValueError``. ``None`` means ``"never"``.
    """
    if refresh is None:
        refresh = "never"
    if refresh not in REFRESH_POLICIES:
        raise ValueError(f"refresh must be one of {REFRESH_POLICIES}, got {refresh!r}")
    if refresh != "auto":
        return refresh
    if plan_given or not method_cls.replans_each_epoch:
        return "never"
    if embed_fn_given and embed_fn_follows_model:
        return "epoch"
    if embeddings_given or embed_fn_given:
        return "never"
    raise ValueError(
        f"method {method_cls.name!r} plans from embeddings: give embed_fn= (re-plan each "
        "epoch from the current model), embeddings= (plan once), plan=, or "
        "refresh='recorded' (plan from the embeddings the training step records)"
    )


def make_refresh_policy(
    refresh: str | None,
    planning: Planning,
    *,
    plan: BatchPlan | None = None,
    refresh_every: int | None = None,
    initial: str = "auto",
    recorder: EmbeddingRecorder | None = None,
) -> RefreshPolicy:
    """The refresh policy for ``refresh`` (``"auto"`` resolved by :func:`resolve_refresh`).

    Parameters
    ----------
    refresh : {"auto", "never", "epoch", "recorded", "steps"} or None
    planning : Planning
        The sampler's settings (method, embeddings, ``embed_fn``, N, ...).
    plan : BatchPlan, optional
        A given static plan (only ``"never"`` serves one).
    refresh_every : int, optional
        Batches between re-plans; only with ``"steps"``.
    initial : {"auto", "embed", "random"}
        First epoch of ``"recorded"``: ``"embed"`` plans from the given embeddings or one
        ``embed_fn`` pass, ``"random"`` from nothing; ``"auto"`` embeds when it can.
    recorder : EmbeddingRecorder, optional
        Only with ``"recorded"`` (default: a new one for N samples).

    Raises
    ------
    ValueError
        An unknown name, or a combination the policy cannot serve (a given plan with a
        re-planning policy, ``"epoch"``/``"steps"`` without ``embed_fn``, ``"recorded"`` for a
        method that reads no embeddings, ``"steps"`` for a method with its own per-epoch rule,
        nothing to plan once from, a misplaced ``refresh_every``/``recorder``, ...).
    """
    given = {
        "method_cls": planning.method_cls,
        "plan_given": plan is not None,
        "embed_fn_given": planning.embed_fn is not None,
        "embeddings_given": planning.embeddings is not None,
    }
    cls = POLICY_CLASSES[resolve_refresh(refresh, **given)]
    cls.check(**given)
    if initial not in INITIAL_RULES:
        raise ValueError(f"initial must be 'auto', 'embed' or 'random', got {initial!r}")
    if initial == "embed" and not (given["embed_fn_given"] or given["embeddings_given"]):
        raise ValueError("initial='embed' needs embed_fn or embeddings")
    return cls.build(
        planning, plan=plan, refresh_every=refresh_every, initial=initial, recorder=recorder
    )


__all__ = [
    "INITIAL_RULES",
    "POLICY_CLASSES",
    "REFRESH_POLICIES",
    "EpochRefresh",
    "NeverRefresh",
    "RecordedRefresh",
    "RefreshPolicy",
    "StepsRefresh",
    "make_refresh_policy",
    "resolve_refresh",
]
