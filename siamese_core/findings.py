"""`Finding`: one named problem with evidence and a fix.

Findings are produced by the data checks, the model-graph checks, the probe
runs of ``siamese-sweep doctor`` and the callbacks that watch every training.
Their ``code`` is stable: sweeps turn it into MLflow tags and Optuna prune reasons.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

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
        out = {"code": self.code, "severity": self.severity, "message": self.message, "fix": self.fix,
               "evidence": _jsonable(self.evidence)}
        if self.epoch is not None:
            out["epoch"] = self.epoch
        return out

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float) and value != value:
        return None
    return value


def worst(findings: list[Finding]) -> Severity | None:
    return max((f.severity for f in findings), key=SEVERITY_ORDER.__getitem__, default=None)
