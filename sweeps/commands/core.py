"""``train`` and ``doctor``: single runs of the core, no Optuna or MLflow."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..argtypes import output_dir
from ..cli import EXIT_FINDINGS, EXIT_OK, add_set_option, print_json

if TYPE_CHECKING:  # the CLI imports the core (TensorFlow) only in the commands that train
    from siamese_core.findings import Finding


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one Siamese model from a YAML config",
                       description="Train one Siamese model. The config file is optional when --set gives enough.")
    p.add_argument("config", nargs="?", help="YAML train config (defaults fill what it omits)")
    add_set_option(p)
    p.add_argument("--json", action="store_true", help="print the result summary as one JSON object on stdout")
    p.add_argument("--output", metavar="DIR", type=output_dir, help="save model.keras and result.json here")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")
    p.set_defaults(handler=cmd_train)

    d = sub.add_parser("doctor", help="name what is wrong with a Siamese setup before you train it",
                       description="Data checks, model-graph checks and short probe runs; exit 3 on an error finding.")
    d.add_argument("config", nargs="?", help="YAML train config")
    add_set_option(d)
    d.add_argument("--json", action="store_true", help='print {"findings": [...]} as JSON on stdout')
    d.set_defaults(handler=cmd_doctor)


def _load(args: argparse.Namespace):
    from siamese_core.config import load_config, parse_set_options

    return load_config(args.config, parse_set_options(args.overrides))


def cmd_train(args: argparse.Namespace) -> int:
    config = _load(args)  # ConfigError here, before TensorFlow is imported
    from siamese_core.training import train

    result = train(config, verbose=not args.quiet)
    if args.output:
        result.save(args.output)
    summary = result.summary()
    if args.json:
        print_json(summary)
    else:
        t = result.test
        print(f"test pair_accuracy={t['pair_accuracy']:.4f} roc_auc={t['roc_auc']:.4f} eer={t['eer']:.4f} "
              f"threshold={result.threshold:.4g} ({summary['seconds']:.1f}s)")
        if args.output:
            print(f"saved to {args.output}", file=sys.stderr)
        _print_findings(result.findings)
    return EXIT_OK


def _print_findings(findings: list[Finding]) -> None:
    """The training's warning and error findings on stderr, as the doctor shows them: a summed triplet loss
    (`loss_reduction`, an error) trained to exit 0 and showed nothing but the test line without --json."""
    from siamese_core.diagnostics import render_report

    shown = [f for f in findings if f.severity != "info"]
    if shown:
        print(f"the checks that watched this training found:\n{render_report(shown)}", file=sys.stderr)


def cmd_doctor(args: argparse.Namespace) -> int:
    config = _load(args)
    from siamese_core.diagnostics import render_report, report_json
    from siamese_core.doctor import diagnose

    findings = diagnose(config)
    if args.json:
        print_json(report_json(findings))
    else:
        print(render_report(findings))
    return EXIT_FINDINGS if any(f.is_error for f in findings) else EXIT_OK
