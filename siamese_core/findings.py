"""`Finding`: one named problem with evidence and a fix, and the `FindingBus` that carries them.

Findings are produced by the data checks, the model-graph checks, the probe
runs of ``siamese-sweep doctor`` and the callbacks that watch every training.
Their ``code`` is stable: sweeps turn it into MLflow tags and Optuna prune reasons.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from .jsonable import jsonable

__all__ = ["Finding", "FindingBus", "Severity", "SEVERITY_ORDER"]

Severity = Literal["info", "warning", "error"]
SEVERITY_ORDER = {"info": 0, "warning": 1, "error": 2}


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    message: str
    fix: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON form (NaN/inf evidence becomes null)."""
        out = {"code": self.code, "severity": self.severity, "message": self.message, "fix": self.fix,
               "evidence": jsonable(self.evidence)}
        if self.epoch is not None:
            out["epoch"] = self.epoch
        return out

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


class FindingBus:
    """Fans findings out, during a training run, to every callback that defines ``on_finding(finding)``.

    Each (code, epoch) is delivered once; `findings` keeps them in order for the `TrainResult`.
    """

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self._listeners: list[Callable[[Finding], None]] = []

    def attach(self, callbacks: Iterable[object]) -> None:
        """Listen with every callback that has an ``on_finding`` method (replaces earlier listeners)."""
        self._listeners = [cb.on_finding for cb in callbacks  # type: ignore[attr-defined]
                           if callable(getattr(cb, "on_finding", None))]

    def emit(self, finding: Finding) -> None:
        if any(f.code == finding.code and f.epoch == finding.epoch for f in self.findings):
            return
        self.findings.append(finding)
        for listener in self._listeners:
            listener(finding)
