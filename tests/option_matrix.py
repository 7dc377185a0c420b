"""Every optimizer with every option that changes what its step computes: the matrix the
device tests (meta, CUDA) step through. One entry = (id, constructor, kwargs)."""
from __future__ import annotations

from typing import Any, Callable

import lrfree

PS = {"psdasgd": lrfree.PSDASGD, "pssps": lrfree.PSSPS, "psdog": lrfree.PSDoG}
BASE = {"sps": lrfree.SPS, "dadaptsgd": lrfree.DAdaptSGD}
# PSDASGD's default (schedule_free="auto") is the schedule-free iteration where no LR
# scheduler is attached, as in these tests: its rows of the shared options pin the momentum
# step, and its own rows cover the defaults and the schedule-free iteration
PINNED = {"psdasgd": {"schedule_free": False}}

# options every PS optimizer takes, one change from the defaults at a time
PS_OPTIONS: list[dict[str, Any]] = [
    {},
    {"average": True},
    {"foreach": False},
    {"foreach": False, "average": True},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "decouple": False},
    {"betas": (0.0, 0.999)},
    {"alpha_norm": "none"},
    {"state_dtype": "param"},
    *({"scaling": s} for s in ("amsgrad", "rmsprop", "adagrad", "adafactor", "none")),
    {"scaling": "adafactor", "foreach": False, "average": True},
]
# options of one optimizer only
OWN_OPTIONS: dict[str, list[dict[str, Any]]] = {
    "psdasgd": [{}, {"d0": 1e-2}, {"d_coef": 0.5, "growth_rate": 2.0},
                {"alpha_norm": "running"}, {"schedule_free": True},
                {"schedule_free": True, "foreach": False},
                {"schedule_free": True, "state_dtype": "param"},
                {"schedule_free": True, "weight_decay": 0.1, "scaling": "adafactor"}],
    "pssps": [{"f_star": -0.5, "c": 0.2}, {"alpha_norm": "running"}],  # PSDoG has no "running"
    "psdog": [{"reps_rel": 1e-4}],
    "sps": [{}, {"foreach": False}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "decouple": False},
            {"f_star": 0.1}],
    "dadaptsgd": [{}, {"foreach": False}, {"momentum": 0.9}, {"momentum": 0.9, "foreach": False},
                  {"weight_decay": 0.1}, {"weight_decay": 0.1, "decouple": False},
                  {"growth_rate": 2.0}],
}
NONFINITE = ("skip", "raise", "unchecked")


def _label(kwargs: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in kwargs.items()) or "defaults"


def cases() -> list[tuple[str, Callable[..., Any], dict[str, Any]]]:
    out = []
    for name, cls in PS.items():
        for kw in (*({**PINNED.get(name, {}), **shared} for shared in PS_OPTIONS),
                   *OWN_OPTIONS[name]):
            out.append((f"{name}[{_label(kw)}]", cls, kw))
    for name, cls in BASE.items():
        for kw in OWN_OPTIONS[name]:
            out.append((f"{name}[{_label(kw)}]", cls, kw))
    return out


CASES = cases()
IDS = [c[0] for c in CASES]
