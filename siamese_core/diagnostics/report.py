"""Findings for people (a readable block each) and for machines (JSON, MLflow tags)."""
from __future__ import annotations

import json
import math
import textwrap
from typing import Any

from ..findings import SEVERITY_ORDER, Finding

INDENT = " " * 9
WIDTH = 110


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, separators=(", ", ": "))
    return str(value)


def ordered(findings: list[Finding]) -> list[Finding]:
    """Errors first, then warnings, then info; stable within a severity."""
    return sorted(findings, key=lambda f: -SEVERITY_ORDER[f.severity])


def render_report(findings: list[Finding]) -> str:
    """One block per finding: ``ERROR  code  — message`` / evidence / fix, then a summary line."""
    if not findings:
        return ("healthy: no problems found (data checks, model-graph checks, loss checks, loader parity, "
                "overfit probe, short training run)")
    blocks = []
    for f in ordered(findings):
        head = f"{f.severity.upper():<7}  {f.code}  — {f.message}"
        lines = textwrap.wrap(head, WIDTH, subsequent_indent=INDENT)
        if f.evidence:
            ev = ", ".join(f"{k}={_fmt(v)}" for k, v in f.evidence.items())
            lines += textwrap.wrap(f"evidence: {ev}", WIDTH, initial_indent=INDENT, subsequent_indent=INDENT + "  ")
        if f.fix:
            lines += textwrap.wrap(f"fix: {f.fix}", WIDTH, initial_indent=INDENT, subsequent_indent=INDENT + "  ")
        blocks.append("\n".join(lines))
    counts = {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")}
    summary = ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items() if n)
    return "\n\n".join(blocks) + f"\n\n{summary}"


def report_json(findings: list[Finding]) -> dict[str, Any]:
    """``{"findings": [{"code", "severity", "message", "evidence", "fix"[, "epoch"]}, ...]}``."""
    return {"findings": [f.to_dict() for f in ordered(findings)]}


def mlflow_tags(findings: list[Finding], *, prefix: str = "diagnostics.") -> dict[str, str]:
    """Tags a tracker can set on a run: one per code (its worst severity) and the worst overall."""
    tags: dict[str, str] = {}
    for f in findings:
        key = prefix + f.code
        if key not in tags or SEVERITY_ORDER[f.severity] > SEVERITY_ORDER[tags[key]]:
            tags[key] = f.severity
    if findings:
        tags[prefix + "worst"] = max((f.severity for f in findings), key=SEVERITY_ORDER.__getitem__)
    return tags


def prune_reason(finding: Finding) -> str:
    """A one-line reason for an Optuna prune/fail record."""
    where = f" (epoch {finding.epoch})" if finding.epoch is not None else ""
    return f"{finding.code}{where}: {finding.message}"


def merge(findings: list[Finding]) -> list[Finding]:
    """One finding per code: the most severe, the earliest among equals (the doctor runs checks twice)."""
    best: dict[str, Finding] = {}
    for f in findings:
        cur = best.get(f.code)
        if cur is None or SEVERITY_ORDER[f.severity] > SEVERITY_ORDER[cur.severity]:
            best[f.code] = f
    return ordered(list(best.values()))
