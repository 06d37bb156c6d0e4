"""The exit rule of adaptive timesteps (docs/stream.md): stop a sample at the first step
``t >= t_min`` whose output is clear enough.

- ``confidence``: the largest softmax probability of the running-mean output is ``>= c``;
- ``margin``: the largest minus the second largest probability of the running mean is ``>= c``;
- ``step-margin``: this step's own output agrees with the running mean on the class and the
  gap between its two largest softmax probabilities is ``>= c``.

``choose_rule`` picks ``t_min`` and ``c`` on calibration data from the outputs of every step:
for each ``t_min``, the loosest ``c`` on a grid (walking down from the strictest) whose exits
cost at most ``tol`` points of the samples that agree with the ANN after all T steps; of those,
the one with the fewest mean timesteps.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["ExitRule", "scores", "exit_steps", "choose_rule", "RULE_KEY", "RULES"]

RULE_KEY = "onnx2burst.adaptive"
RULES = ("confidence", "margin", "step-margin")


def _probs(pred: np.ndarray, head: str | None) -> np.ndarray:
    p = np.asarray(pred, np.float64).reshape(len(pred), -1)
    if head == "Softmax":
        return p
    if head == "LogSoftmax":
        return np.exp(p)
    if head is not None:
        raise ConfigError(f"the output's head is {head}: no class probabilities to exit on")
    p = p - p.max(axis=1, keepdims=True)
    e = np.exp(p)
    return e / e.sum(axis=1, keepdims=True)


def _gap(p: np.ndarray) -> np.ndarray:
    if p.shape[1] < 2:
        return np.ones(len(p))
    top2 = np.partition(p, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def scores(pred: np.ndarray, head: str | None, kind: str = "confidence", step: np.ndarray | None = None) -> np.ndarray:
    """Per sample, the score ``kind`` compares with c: from the any-time output ``pred`` (after
    the head ``head``) and, for ``step-margin``, this step's own output ``step`` (before it)."""
    p = _probs(pred, head)
    if kind == "confidence":
        return p.max(axis=1)
    if kind == "margin":
        return _gap(p)
    if step is None:
        raise ConfigError("the step-margin rule needs the step's own output")
    ps = _probs(step, None)
    return np.where(ps.argmax(axis=1) == p.argmax(axis=1), _gap(ps), -1.0)


@dataclass(frozen=True)
class ExitRule:
    """Exit at the first step ``t >= t_min`` whose score (``kind``) is ``>= c``."""

    c: float
    t_min: int = 1
    kind: str = "confidence"
    tol: float | None = None        # the agreement tolerance (points) it was chosen for, if chosen

    def __post_init__(self):
        if self.kind not in RULES:
            raise ConfigError(f"exit rule {self.kind!r}: one of {list(RULES)}")
        if not (np.isfinite(self.c) and 0 <= self.c <= 1):
            raise ConfigError(f"exit threshold c must be within [0, 1], got {self.c}")
        if int(self.t_min) < 1:
            raise ConfigError(f"t_min must be >= 1, got {self.t_min}")

    def exits(self, pred: np.ndarray, t: int, *, head: str | None = None, step: np.ndarray | None = None) -> np.ndarray:
        """Which samples exit after step ``t``: ``pred`` the any-time output ``[N, K]`` (after the
        head ``head``), ``step`` this step's own output (for ``step-margin``)."""
        return (scores(pred, head, self.kind, step) >= self.c) & (t >= self.t_min)

    def describe(self) -> str:
        """The rule in words."""
        what = {"confidence": f"the largest probability of the running mean is >= {self.c:.6g}",
                "margin": f"the gap of the running mean's two largest probabilities is >= {self.c:.6g}",
                "step-margin": f"the step's own output names the running mean's class with a gap of its two "
                               f"largest probabilities >= {self.c:.6g}"}[self.kind]
        return f"exit after the first step >= {self.t_min} where {what}"

    def to_metadata(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_metadata(cls, meta: dict) -> "ExitRule | None":
        """The rule stored under ``onnx2burst.adaptive`` (None when there is none)."""
        raw = meta.get(RULE_KEY) or meta.get("adaptive")
        if not raw:
            return None
        try:
            d = json.loads(raw)
            return cls(float(d["c"]), int(d.get("t_min", 1)), str(d.get("kind", "confidence")), d.get("tol"))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"the metadata {RULE_KEY} is not an exit rule: {e}") from None


def exit_steps(step_scores: np.ndarray, c: float, t_min: int) -> np.ndarray:
    """Exit step (1..T) per sample from scores ``[T, N]`` of the any-time output after each step."""
    T = step_scores.shape[0]
    ok = step_scores >= c
    ok[:max(t_min, 1) - 1] = False
    ok[T - 1] = True
    return ok.argmax(axis=0) + 1


def c_grid(kind: str = "confidence") -> np.ndarray:
    """The thresholds ``choose_rule`` tries, strictest first."""
    fine = 1 - np.logspace(-6, 0, 61)[:-1]  # 0.999999 .. down to ~0.2, dense near 1
    lo = 1.0 / 2 if kind == "confidence" else 0.0
    return np.unique(np.concatenate([[1.0], fine[fine >= lo], np.linspace(lo, 1, 51)]))[::-1]


def choose_rule(step_preds: np.ndarray, ann_pred: np.ndarray, *, tol: float = 0.0, kind: str = "confidence",
                head: str | None = None, t_min: int | None = None,
                steps: np.ndarray | None = None) -> tuple[ExitRule, dict]:
    """The exit rule for any-time outputs ``step_preds`` ``[T, N, K]`` (``steps``: each step's own
    output, for ``step-margin``) and the ANN's classes.

    tol: the share (points) of samples that agree with the ANN after T steps but not at their
    exit; a sample that gains agreement by exiting early does not pay for one that loses it. t_min:
    fixed, or None to choose it too. Returns the rule and a summary (mean timesteps, the
    agreements).
    """
    T, n = step_preds.shape[:2]
    if n == 0:
        raise ConfigError("no calibration samples to choose the exit rule on")
    sc = np.stack([scores(step_preds[t], head, kind, None if steps is None else steps[t]) for t in range(T)])
    cls = step_preds.reshape(T, n, -1).argmax(axis=2)
    full = float((cls[-1] == ann_pred).mean())
    best = None
    for tm in ([t_min] if t_min else range(1, T + 1)):
        chosen = None
        for c in c_grid(kind):
            ex = exit_steps(sc, c, tm)
            hit = cls[ex - 1, np.arange(n)] == ann_pred
            lost = float((~hit & (cls[-1] == ann_pred)).mean())  # agreed after T steps, not at the exit
            agree = float(hit.mean())
            if 100 * lost > tol:
                break
            chosen = (float(c), tm, float(ex.mean()), agree)
        if chosen and (best is None or chosen[2] < best[2] - 1e-12):
            best = chosen
    if best is None:  # even c = 1 loses agreement: never exit early
        best = (1.0, T, float(T), full)
    rule = ExitRule(best[0], best[1], kind, float(tol))
    return rule, {"mean_timesteps": best[2], "agreement": best[3], "agreement_full_T": full, "samples": n}
