"""Arms of the recipe comparison: (name, method, knobs, student options).

An arm is one column of the recipe tables: a batch method of :mod:`.methods` with its knobs,
and the student's options (the false-negative mask). Knobs not among the benchmark's own
(:data:`.methods.DEFAULTS`) pass through to hardbatch (e.g. ``hardness``); a knob set to
:data:`.methods.LIBRARY` passes nothing, so the library's default applies. Names:

``random``                 uniform random batches
``gcbs``                   GCBS as the evidence run had it: ``quantile=0.999`` explicitly
``gcbs_default``           GCBS with no knob at all: the library's defaults (selection rule
                           and ``hardness="auto"``)
``gcbs_full``              ``gcbs_default`` at ``hardness=1`` (the method's own batches)
``gcbs_dial05``            ``gcbs_default`` at ``hardness=0.5``
``gcbs_ramp``              ``gcbs_default`` with a curriculum: ``hardness`` linear from 0
                           (random) at epoch 0 to 1 at epoch 4 (:data:`RAMP`)
``gcbs_decay``             ``gcbs_default`` with the reverse schedule: ``hardness`` linear
                           from 1 at epoch 0 to 0 (random) at the run's last epoch
                           (:data:`DECAY`; the decaying hardness of THUDM's BatchSampler)
``b3``                     B3 with the evidence run's p, m scaled to N, cluster size 32
``b3_default``             B3 with no cluster_size / p / m / hardness (the library's defaults)
``b3_full``                ``b3_default`` at ``hardness=1``
``b3_dial05``              ``b3_default`` at ``hardness=0.5``
``b3_decay``               ``b3_default`` with ``gcbs_decay``'s schedule

The recommended recipe is ``gcbs_default`` for a fine-tuned encoder; for a head over frozen
features or a static table ``gcbs_decay+mask_teacher`` where the student does not pass its
teacher and ``gcbs_decay`` where it does (README; ``readme_figures.mask_rule``).
``<arm>+mask_teacher``     the same batches, loss with the teacher false-negative mask
``<arm>+mask_self``        the same batches, loss with the student's own (detached) mask
``<arm>+mask_teacher_hard`` the teacher mask only in epochs of hard batches (hardness > 0): an
                           epoch of random batches (a decay's last) trains without it
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .methods import LIBRARY, check_knobs

#: The curriculum of ``gcbs_ramp``: ``HardnessSchedule.linear(0, 1, 4)`` in its JSON form
#: (the form a plan records; hardbatch takes it as ``hardness=``).
RAMP = {"schedule": "linear", "start": 0.0, "end": 1.0, "epochs": 4}

#: The schedule of ``gcbs_decay``: hard batches first, random ones last,
#: ``HardnessSchedule.linear(1, 0, E - 1)`` for a run of ``E`` epochs (``"last"`` is resolved
#: per run by :func:`resolve_knobs`; 4 for the 5-epoch whole-corpus runs).
DECAY = {"schedule": "linear", "start": 1.0, "end": 0.0, "epochs": "last"}


def resolve_knobs(knobs: dict[str, Any], epochs: int) -> dict[str, Any]:
    """``knobs`` with a schedule ending at ``"last"`` resolved for a run of ``epochs``
    epochs (its end reached at the last epoch, ``epochs - 1``, at least 1)."""
    hardness = knobs.get("hardness")
    if isinstance(hardness, dict) and hardness.get("epochs") == "last":
        return {**knobs, "hardness": {**hardness, "epochs": max(1, int(epochs) - 1)}}
    return knobs


#: Student options of the mask suffixes.
MASKS = {
    "": {},
    "+mask_teacher": {"fn_mask": "teacher"},
    "+mask_self": {"fn_mask": "self"},
    "+mask_teacher_hard": {"fn_mask": "teacher", "fn_when": "hard"},
}


@dataclass(frozen=True)
class Arm:
    """One compared configuration.

    Attributes
    ----------
    name : str
    method : str
        One of :data:`.methods.METHODS`.
    knobs : dict
        Method knobs (benchmark knobs or library pass-through).
    student : dict
        Keyword options of the student (``fn_mask``, ``fn_rule``, ``fn_margin``).
    """

    name: str
    method: str
    knobs: dict[str, Any] = field(default_factory=dict)
    student: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        """The arm's name without its mask suffix."""
        return self.name.split("+", 1)[0]

    @property
    def mask(self) -> str:
        """The mask suffix (``""``, ``"+mask_teacher"``, ``"+mask_self"``)."""
        return self.name[len(self.base) :]


def base_arms(gcbs_method: str = "gcbs") -> list[tuple[str, str, dict]]:
    """``(name, method, knobs)`` of the unmasked arms; ``gcbs_method`` picks the refresh
    (``"gcbs"``: epoch refresh, ``"gcbs_rec"``: recorded)."""
    lib_b3 = {"cluster_size": LIBRARY, "p": LIBRARY, "m": LIBRARY}
    return [
        ("random", "random", {}),
        ("gcbs", gcbs_method, {"quantile": 0.999, "hardness": 1.0}),
        ("gcbs_default", gcbs_method, {"quantile": LIBRARY, "hardness": LIBRARY}),
        ("gcbs_full", gcbs_method, {"quantile": LIBRARY, "hardness": 1.0}),
        ("gcbs_dial05", gcbs_method, {"quantile": LIBRARY, "hardness": 0.5}),
        ("gcbs_ramp", gcbs_method, {"quantile": LIBRARY, "hardness": dict(RAMP)}),
        ("gcbs_decay", gcbs_method, {"quantile": LIBRARY, "hardness": dict(DECAY)}),
        ("b3", "b3", {"hardness": 1.0}),
        ("b3_default", "b3", {**lib_b3, "hardness": LIBRARY}),
        ("b3_full", "b3", {**lib_b3, "hardness": 1.0}),
        ("b3_dial05", "b3", {**lib_b3, "hardness": 0.5}),
        ("b3_decay", "b3", {**lib_b3, "hardness": dict(DECAY)}),
    ]


def recipe_arms(gcbs_method: str = "gcbs", masks=tuple(MASKS)) -> list[Arm]:
    """Every base arm with every mask suffix, base by base."""
    return [
        Arm(name + suffix, method, dict(knobs), dict(MASKS[suffix]))
        for name, method, knobs in base_arms(gcbs_method)
        for suffix in masks
    ]


ARM_NAMES = tuple(a.name for a in recipe_arms())


def select(arms: list[Arm], names: list[str] | None) -> list[Arm]:
    """The arms named (in the given order); all when ``names`` is None."""
    if names is None:
        return list(arms)
    by = {a.name: a for a in arms}
    unknown = [n for n in names if n not in by]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; known: {', '.join(by)}")
    return [by[n] for n in names]


def check_arms(arms: list[Arm]) -> None:
    """Fail fast, before any training: every arm's knobs must be known to the installed
    hardbatch (all problems in one message)."""
    problems = []
    for arm in arms:
        try:
            # A "last" schedule is checked as resolved for a 5-epoch run (any length >= 2
            # gives a valid schedule; the run resolves its own).
            check_knobs(arm.method, resolve_knobs(arm.knobs, 5))
        except ValueError as e:
            problems.append(f"arm {arm.name!r}: {e}")
    if problems:
        raise ValueError(
            "these arms cannot run with this hardbatch (drop them with --arms):\n  "
            + "\n  ".join(problems)
        )
