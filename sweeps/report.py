"""What a sweep learned, in one page: the best trial against the start-up phase, parameter importances, the
failure map (which diagnostic or prune/fail reason hit how many trials, and in which region of the search
space), and a narrower search space to try next.

Everything is computed from the study alone (trial params, values, states and the reasons and diagnostic codes
sweeps records as user attributes), so ``siamese-sweep report --study NAME`` works on any storage, and the same
page is logged to the parent run (``report.md``) when a sweep finishes.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna

from . import best as ranking
from . import importances, margin, names, outcomes
from .study import best_phase, reasons_of, retried_numbers, startup_trials

log = logging.getLogger(__name__)

__all__ = ["Region", "FailureEntry", "SweepReport", "build_report", "render_markdown"]

# a region is reported when it holds at least this share of its trials failing that way, and at least two of them
_MIN_PRECISION = 0.6
_MIN_HITS = 2
# the suggested range spans the best quarter of complete trials, but never fewer than this many
_MIN_TOP = 3
ANY_FAILURE = "any failure"  # the failure map's row for every diagnostic, NaN and crash together
# stopped from outside (a signal, a dead worker, MLflow down) and queued again with the same parameters: not a
# failure of those parameters, so no region and not in "any failure" (an interrupted trial whose retry completed
# was mapped as a failure of its region). Only with a retry: one whose retries ran out (a worker killed for
# memory every time) is a failure of its parameters like any other.
_RETRIED = frozenset(o.reason for o in outcomes.OUTCOMES if o.retried)
RETRIED_WHERE = "stopped from outside the trial; queued again with the same parameters"


@dataclass(frozen=True)
class Region:
    """Where in the search space one failure concentrates: ``param op value`` (op: ``>``, ``<=``, ``==``)."""

    param: str
    op: str
    value: Any
    hits: int          # trials in the region that failed this way
    trials: int        # trials in the region
    hits_outside: int  # trials outside the region that failed this way
    trials_outside: int

    def describe(self) -> str:
        return (f"{self.hits} of {self.trials} trials with {self.param} {self.op} {_value(self.value)} "
                f"(and {self.hits_outside} of {self.trials_outside} others)")


@dataclass(frozen=True)
class FailureEntry:
    code: str                # a diagnostic code (collapse, nan_loss, ...) or a prune/fail reason
    kind: str                # "diagnostic", "pruned", "failed", "retried" (`_RETRIED`), or "any" (every failure)
    trials: tuple[int, ...]  # trial numbers it hit
    region: Region | None


@dataclass
class SweepReport:
    study: str
    direction: str | None
    counts: dict[str, int]
    startup_trials: int | None                     # None: the sampler has no start-up phase (random, grid)
    best: dict[str, Any] | None = None             # number, value, params, phase (`study.BestPhase.phase`)
    best_startup_value: float | None = None
    search_trials: int = 0                         # finished trials past the start-up (`study.BestPhase.searched`)
    margin: dict[str, Any] | None = None           # the best trial's lead vs sampling error (`sweeps.margin`)
    importances: dict[str, float] = field(default_factory=dict)
    failures: list[FailureEntry] = field(default_factory=list)
    suggested_space: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failures"] = [{**asdict(f), "region": None if f.region is None else
                            {**asdict(f.region), "text": f.region.describe()}} for f in self.failures]
        return out


def build_report(study: optuna.Study, status: Mapping[str, Any] | None = None) -> SweepReport:
    """The report of `study` (single- or multi-objective; importances and the best trial need one objective).
    `status`: `study_status` of the same study, whose margin is taken rather than tested again (the paired test
    decodes every trial's pairs: 0.25 s for 500 trials of 2,000 pairs, ad hoc)."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    single = len(study.directions) == 1
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    report = SweepReport(study=study.study_name, direction=study.direction.name.lower() if single else None,
                         counts=counts, startup_trials=startup_trials(study))
    complete, told = ranking.split_complete(study, trials)
    if told:
        report.notes.append(f"trial(s) {', '.join(f'#{t.number}' for t in told)} told COMPLETE outside "
                            "siamese-sweep (Optuna's own tell or add_trial: no results recorded by a worker): not "
                            "ranked")
    if single and complete:
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        best = ranking.best_of(study, complete)
        assert best is not None
        phase = best_phase(study, best, trials, not_ranked=[t.number for t in told])
        report.best = {"number": best.number, "value": best.value, "params": dict(best.params), "phase": phase.phase}
        report.best_startup_value, report.search_trials = phase.best_startup_value, phase.searched
        if status is not None and (status.get("best") or {}).get("number") == best.number:  # not a newer best
            report.margin = status.get("margin")
        else:
            lead = margin.best_margin(study, complete)
            report.margin = None if lead is None else lead.to_dict()
        report.importances = _importances(study, len(complete))
        if report.importances and len(complete) < importances.FEW_FOR_A_RANKING:
            report.notes.append(f"the parameter importances come from {len(complete)} complete trials: with fewer "
                                f"than {importances.FEW_FOR_A_RANKING} the ranking is a rough guide "
                                "(one more trial can change the top parameter)")
        report.suggested_space = _suggest(study, complete, maximize)
    elif not single:
        report.notes.append("multi-objective study: see the Pareto front plot; no single best trial or importances")
    sets = {t.user_attrs.get(names.TRIAL_ATTR_EVAL_FINGERPRINT) for t in complete} - {None}
    if len(sets) > 1:  # silent before: the paired margin test fell back to the bound, the ranking went on
        report.notes.append(f"the complete trials were scored on {len(sets)} different sets of evaluation pairs "
                            f"(validation or test: their eval fingerprints differ, from a searched seed, dataset or "
                            f"pair count, or a resume across a version that changed how evaluation pairs are "
                            f"drawn): where the validation pairs differ, their val_* compare only roughly")
    report.failures = _failure_map(study, trials)
    if single and complete and report.best is not None and report.best["phase"] == "start-up" and report.search_trials:
        report.notes.append(f"the best trial came from the {report.startup_trials} random start-up trials: the "
                            "search phase has not improved on random sampling yet (more trials, or a narrower space)")
    return report


def _importances(study: optuna.Study, n_complete: int) -> dict[str, float]:
    """fANOVA, as the study's importance plots (`sweeps.importances`): drawn ahead, they computed it already."""
    return (importances.parameter_importances(ranking.ranked_view(study)) if n_complete >= importances.MIN_COMPLETE
            else {})


def _codes(t: optuna.trial.FrozenTrial, reason: Callable[[optuna.trial.FrozenTrial], str],
           retried: set[int]) -> list[tuple[str, str]]:
    """(code, kind) of everything that went wrong in one trial (`reason`: `sweeps.study.reasons_of`; `retried`:
    the trials that have a retry)."""
    out: list[tuple[str, str]] = []
    if t.state == optuna.trial.TrialState.COMPLETE:
        out += [(str(c), "diagnostic") for c in (t.user_attrs.get(names.TRIAL_ATTR_DIAGNOSTIC_ERRORS) or [])]
    elif t.state == optuna.trial.TrialState.PRUNED:
        code = reason(t)
        out.append((code, "pruned"))  # and what else its training found (collapse with constant_output)
        out += [(str(c), "diagnostic") for c in (t.user_attrs.get(names.TRIAL_ATTR_DIAGNOSTIC_ERRORS) or [])
                if c != code]
    elif t.state == optuna.trial.TrialState.FAIL:
        code = reason(t)
        out.append((code, "retried" if code in _RETRIED and t.number in retried else "failed"))
    return out


def _failure_map(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> list[FailureEntry]:
    by_code: dict[tuple[str, str], list[int]] = {}
    every = study.get_trials(deepcopy=False)  # a retry still WAITING or RUNNING counts: it is queued
    reason, retried = reasons_of(study, every), retried_numbers(every)
    for t in trials:
        for code_kind in _codes(t, reason, retried):
            by_code.setdefault(code_kind, []).append(t.number)
    # every failure together (the pruner's own verdicts aside): one region often explains several codes
    failures = [ns for (code, kind), ns in by_code.items() if code != outcomes.PRUNED.reason and kind != "retried"]
    failed = sorted({n for ns in failures for n in ns})
    if len(failures) > 1:  # one code alone: the row would repeat it
        by_code[(ANY_FAILURE, "any")] = failed
    entries = []
    for (code, kind), numbers in sorted(by_code.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        # the pruner's own verdict (a worse curve) is the search working, not a failure with a region
        region = None if code == outcomes.PRUNED.reason or kind == "retried" else _region(trials, set(numbers))
        entries.append(FailureEntry(code, kind, tuple(sorted(numbers)), region))
    return entries


def _region(trials: list[optuna.trial.FrozenTrial], hit: set[int]) -> Region | None:
    """The one-parameter split (a threshold, or a categorical value) that best isolates the `hit` trials."""
    if len(hit) < _MIN_HITS:
        return None
    best: tuple[float, Region] | None = None
    params = sorted({p for t in trials for p in t.params})
    for param in params:
        having = [t for t in trials if param in t.params]
        values = [t.params[param] for t in having]
        candidates: list[tuple[str, Any, list[bool]]] = []
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            distinct = sorted(set(values))
            for lo, hi in zip(distinct, distinct[1:], strict=False):
                cut = math.sqrt(lo * hi) if lo > 0 and hi / lo > 4 else (lo + hi) / 2
                inside = [v > cut for v in values]
                candidates += [(">", cut, inside), ("<=", cut, [not x for x in inside])]
        else:
            for choice in sorted(set(values), key=repr):
                candidates.append(("==", choice, [v == choice for v in values]))
        for op, value, inside in candidates:
            n_in = sum(inside)
            hits_in = sum(1 for t, x in zip(having, inside, strict=True) if x and t.number in hit)
            if n_in == 0 or hits_in < _MIN_HITS:
                continue
            precision, recall = hits_in / n_in, hits_in / len(hit)
            if precision < _MIN_PRECISION or precision <= len(hit) / len(trials):
                continue  # no more concentrated than everywhere
            f1 = 2 * precision * recall / (precision + recall)
            hits_out = sum(1 for t, x in zip(having, inside, strict=True) if not x and t.number in hit)
            region = Region(param, op, value, hits_in, n_in, hits_out, len(having) - n_in)
            if best is None or f1 > best[0] + 1e-12:
                best = (f1, region)
    return None if best is None else best[1]


def _suggest(study: optuna.Study, complete: list[optuna.trial.FrozenTrial], maximize: bool) -> dict[str, Any]:
    """Per numeric parameter, the range of the best quarter of complete trials (at least `_MIN_TOP`), with its
    step, and the one value as a single choice where they all used it (a spec's range needs low < high: that
    parameter was left out, and pasting the suggestion kept its full range); per categorical one, the choices
    those trials used. Trials tied with the last of them count among them: a cut through tied values is by trial
    number (9 trials all at chance, 0.5, "suggested" the ranges of trials 0-2); when that makes most of the
    trials, the ones strictly better than the tie, if two are, else no suggestion."""
    value = {t.number: float(t.value or 0.0) for t in complete}
    ranked = sorted(complete, key=lambda t: value[t.number], reverse=maximize)
    quarter = max(_MIN_TOP, len(ranked) // 4)
    top = ranked[:quarter]
    if len(top) < _MIN_TOP:
        return {}
    cut = value[top[-1].number]

    def better(t: optuna.trial.FrozenTrial, *, or_equal: bool) -> bool:
        v = value[t.number]
        return (v > cut or (or_equal and v == cut)) if maximize else (v < cut or (or_equal and v == cut))
    top = [t for t in ranked if better(t, or_equal=True)]
    if len(top) > max(quarter, len(ranked) // 2) or len(top) == len(ranked):  # a tie at the cut holds most
        # trials (all at chance), or the top is every trial: the ones strictly better (4 or 5, no tie: the best 3)
        top = [t for t in ranked if better(t, or_equal=False)]
        if len(top) < 2:
            return {}
    out: dict[str, Any] = {}
    for param, dist in (ranked[0].distributions or {}).items():
        used = [t.params[param] for t in top if param in t.params]
        if not used:
            continue
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            kept = [c for c in dist.choices if c in used]
            if len(kept) < len(dist.choices):
                out[param] = {"type": "categorical", "choices": kept}
        elif isinstance(dist, (optuna.distributions.FloatDistribution, optuna.distributions.IntDistribution)):
            lo, hi = min(used), max(used)
            if lo == hi and len(used) >= 2:  # one trial (a conditional parameter) is no agreement
                out[param] = {"type": "categorical", "choices": [lo]}
            elif lo < hi and (lo, hi) != (dist.low, dist.high):
                is_int = isinstance(dist, optuna.distributions.IntDistribution)
                stepped = dist.step is not None and not (is_int and dist.step == 1)
                out[param] = {"type": "int" if is_int else "float", "low": lo, "high": hi,
                              **({"log": True} if dist.log else {}), **({"step": dist.step} if stepped else {})}
    return out


def render_markdown(report: SweepReport) -> str:
    """The report as one Markdown page (what is logged to the parent run as ``report.md``)."""
    lines = [f"# Sweep report: {report.study}", ""]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(report.counts.items()))
    lines += [f"Trials finished: {counts or 'none'}.", ""]
    if report.best is not None:
        b = report.best
        where = ("" if b["phase"] is None else " (enqueued by study.enqueue)" if b["phase"] == "enqueued"
                 else f" ({b['phase']} phase; the first {report.startup_trials} trials are random start-up)")
        lines += ["## Best trial", "", f"Trial {b['number']}{where}: {report.direction} objective = {b['value']:.6g}."]
        if report.best_startup_value is not None:
            lines.append(f"Best of the start-up trials: {report.best_startup_value:.6g}.")
        lines += ["", "| parameter | value |", "|---|---|"]
        lines += [f"| `{k}` | {_fmt(v)} |" for k, v in sorted(b["params"].items())]
        lines.append("")
        if report.margin is not None:
            lines += ["### Is its lead real?", "", margin.describe(report.margin), ""]
    if report.importances:
        lines += ["## Parameter importances (fANOVA)", "", "| parameter | importance |", "|---|---|"]
        lines += [f"| `{k}` | {v:.3f} |" for k, v in report.importances.items()]
        lines.append("")
    lines += ["## Failure map", ""]
    if not report.failures:
        lines += ["No trial was pruned or failed, and no completed trial has an error-severity diagnostic.", ""]
    else:
        lines += ["| what | kind | trials | where |", "|---|---|---|---|"]
        for f in report.failures:
            where = (f.region.describe() if f.region is not None else RETRIED_WHERE if f.kind == "retried"
                     else "no single-parameter region")
            shown = ", ".join(str(n) for n in f.trials[:12]) + (" …" if len(f.trials) > 12 else "")
            lines.append(f"| `{f.code}` | {f.kind} | {len(f.trials)} ({shown}) | {where} |")
        lines.append("")
    if report.suggested_space:
        lines += ["## A narrower search space to try next", "",
                  "The ranges of the best complete trials (paste into `search_space:`):", "", "```yaml"]
        for k, d in report.suggested_space.items():
            lines.append(f"{k}: {{{', '.join(f'{kk}: {_bound(kk, vv, d)}' for kk, vv in d.items())}}}")
        lines += ["```", ""]
        avoid = [f.region for f in report.failures if f.region is not None and f.region.op != "=="]
        if avoid:
            lines += ["Regions to leave out: " + "; ".join(
                f"{r.param} {r.op} {_value(r.value)} (`{f.code}`)" for f in report.failures
                if (r := f.region) is not None and r.op != "==") + ".", ""]
    for note in report.notes:
        lines += [f"Note: {note}.", ""]
    return "\n".join(lines)


def _value(v: Any) -> str:
    """A region's threshold as the failure map and "Regions to leave out" both print it."""
    return f"{v:.4g}" if isinstance(v, float) else repr(v)


def _bound(key: str, v: Any, entry: Mapping[str, Any]) -> str:
    """A suggested range's value, to be pasted into a spec: rounded outward (a low bound down, a high bound up),
    exact where rounding would move it off the values trials used (a step's multiples, a categorical's choices).
    Rounded to the nearest, ``low: 0.4125`` left out the best trial's own learning rate 0.41245, and a spec that
    enqueued it was refused."""
    if isinstance(v, float) and key in ("low", "high") and "step" not in entry:
        return _fmt(_round_out(v, up=key == "high"))
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_bound(key, x, entry) for x in v) + "]"
    return _fmt(v)


def _round_out(v: float, *, up: bool) -> float:
    """`v` to 4 significant figures, never below it (`up`) or above it."""
    near = float(f"{v:.4g}")
    if v == 0 or not math.isfinite(v) or (near >= v if up else near <= v):
        return near
    unit = 10.0 ** (math.floor(math.log10(abs(v))) - 3)
    return float(f"{(math.ceil(v / unit) if up else math.floor(v / unit)) * unit:.4g}")


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()  # YAML's spelling
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)
