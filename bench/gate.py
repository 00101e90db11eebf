"""The promotion gate on real runs: does it call two seeds of one recipe "no worse", and refuse a bad model?

    python bench/gate.py --store .distillery --champion emotion-bal/latest --challenger emotion-bal-s1/latest \\
        --challenger emotion-shuffled/latest --out bench/results/gate-emotion.json

For each challenger: stage `judge` (tasks/stages/judge.py; cached in the store like any
stage) scores it and the champion on the challenger's test split, and `decide` applies the
floors and the paired non-inferiority test exactly as a run does before promotion. The
table gives both accuracies, the discordant rows, the p-value and the decision.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from artifacts.cache import cached_or_run  # noqa: E402
from artifacts.edge import add_store_argument  # noqa: E402
from artifacts.runs import INT8_ROLE, find_run  # noqa: E402
from artifacts.store import ArtifactStore  # noqa: E402
from bench import command  # noqa: E402
from bench.machine import machine, machine_line  # noqa: E402
from tasks.stages import judge  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_store_argument(parser)
    parser.add_argument("--champion", required=True, help="the production run: alias or digest of a run record")
    parser.add_argument("--challenger", action="append", required=True, help="a new run (repeat for several)")
    parser.add_argument("--min-accuracy", type=float, default=0.90)
    parser.add_argument("--min-macro-f1", type=float, default=0.85)
    parser.add_argument("--tolerance", type=float, default=judge.GateParams().tolerance)
    parser.add_argument("--alpha", type=float, default=judge.GateParams().alpha)
    parser.add_argument("--workload", default="emotion", help="names the output file")
    parser.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    store = ArtifactStore(args.store)
    gate = judge.GateParams(min_accuracy=args.min_accuracy, min_macro_f1=args.min_macro_f1, tolerance=args.tolerance,
                            alpha=args.alpha)
    champion = find_run(store, args.champion)
    rows = []
    for name in args.challenger:
        challenger = find_run(store, name)
        inputs = {"dataset": challenger.role("dataset"), "student_tokens": challenger.role("student_tokens"),
                  "student_int8": challenger.role(INT8_ROLE), "production_tokens": champion.role("student_tokens"),
                  "production_int8": champion.role(INT8_ROLE)}
        ref = cached_or_run(judge.STAGE, gate, inputs, store).ref
        judgement = judge.signed_judgement(store.open(ref))
        decision = judge.decide(gate, judgement["challenger"], judgement, champion.digest)
        rows.append({"challenger": name, "run": challenger.digest, "judgement": judgement, "decision": decision})
    result = {"champion": args.champion, "run": champion.digest, "gate": gate.model_dump(), "machine": machine(),
              "challengers": rows}
    lines = [f"# The promotion gate on real runs: champion {args.champion} (run {champion.digest[:12]})", "",
             f"Floors: accuracy {gate.min_accuracy:g}, macro-F1 {gate.min_macro_f1:g}; tolerance {gate.tolerance:g}, "
             f"alpha {gate.alpha:g}; {judge.noninferiority.__module__} ({rows[0]['judgement']['paired']['test']}). "
             f"{machine_line(result['machine'])}.", "",
             "| challenger | its accuracy | champion's | rows only it gets right | only the champion | p | decision |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        j, d = row["judgement"], row["decision"]
        lines.append(f"| {row['challenger']} | {j['challenger']['accuracy']:.2%} | {j['champion']['accuracy']:.2%} | "
                     f"{j['paired']['challenger_only_right']} | {j['paired']['champion_only_right']} | "
                     f"{j['paired']['p_value']:.3g} | {'promote' if d['promote'] else 'refuse: ' + '; '.join(d['reasons'])} |")
    command.write_results(result, "\n".join(lines) + "\n", "gate", args)


if __name__ == "__main__":
    main()
