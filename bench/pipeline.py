"""What the cache and the orchestration cost: pipeline-level measurements, side by side.

    python bench/pipeline.py --data ../shared/data/emotion            # smoke and full emotion
    python bench/pipeline.py --data ../shared/data/emotion --smoke-only
    python bench/pipeline.py --data ../shared/data/emotion --only laptop --store .distillery

For each preset (smoke, then the full emotion workload), in one process:
  (a) a cold flow run into an empty store, the all-cached rerun, and a rerun after
      changing only the quantization settings (dynamic -> static INT8); plus the
      whole laptop command (`python flows/emotion.py`, its own temporary Prefect
      server included) for the cached rerun;
  (b) the same DAG steps as plain function calls (run_stage, no Prefect) into
      another empty store, against the cold flow run; both must make the same artifacts;
  (b') on the full data with a tenth of an epoch per training stage, plain calls and
      the flow alternated (plain, flow, flow, plain, ...), each into an empty store, so
      drift in the machine's speed lands on both sides (--overhead-pairs);
  (c) once, on the full data: teacher training throughput with length-grouped
      dynamic padding, random-batch dynamic padding, and padding every batch to 128
      tokens (the seed article's padding="max_length").
  (d) `--only laptop --store ROOT`: the laptop command's all-cached rerun on a store
      that already holds a full run (the real emotion store), against what that run's
      artifacts cost to compute cold (their manifests' build seconds, summed).
Prints ratios and writes JSON (--out; by default bench/results/pipeline.json, or
pipeline-smoke.json with --smoke-only and pipeline-<only>.json with --only, so a
partial measurement never replaces the full one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import machine, machine_line  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "error", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
           "PREFECT_LOGGING_LEVEL": "WARNING", "DISTILLERY_PROGRESS_BAR": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
QUANTIZE_CHANGE = {"quantize": {"approach": "static"}}


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def plain_run(config, store_root: str) -> tuple[float, dict]:
    """The DAG's steps as plain function calls (no Prefect, no cache lookups); step name -> digest."""
    from artifacts.stage import Progress, run_stage
    from artifacts.store import ArtifactStore
    from flows.dag import ALL_STEP_NAMES, run_dag

    store = ArtifactStore(store_root)
    quiet = Progress(lambda message: None, bar=False)
    made = {}

    # run_dag returns artifacts by role; the flow's summary names them by step, so note each step's.
    def call(step, stage, params, **inputs):
        made[step] = run_stage(stage, params, inputs, store, quiet)
        return made[step]

    seconds, _ = timed(run_dag, config, call)
    assert set(made) <= set(ALL_STEP_NAMES), f"run_dag ran steps {sorted(set(made) - set(ALL_STEP_NAMES))} not in the DAG"
    return seconds, {step: ref.digest for step, ref in made.items()}


def flow_run(workload: str, data: str, smoke: bool, store_root: str, overrides=None) -> tuple[float, dict]:
    from flows.pipeline import distillery

    return timed(distillery, workload=workload, data=data, smoke=smoke, overrides=overrides, store=store_root)


def cli_run(workload: str, data: str, smoke: bool, store_root: str, prefect_home: Path) -> float:
    """The laptop command, as a user types it: new process, temporary Prefect server."""
    env = {**os.environ, **OFFLINE, "PREFECT_HOME": str(prefect_home), "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, f"flows/{workload}.py", "--data", data, "--store", store_root] + (["--smoke"] if smoke else [])
    seconds, proc = timed(subprocess.run, command, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds


def states(summary: dict) -> dict[str, str]:
    return {name: s["state"] for name, s in summary["stages"].items()}


def stage_seconds(summary: dict) -> float:
    return sum(s["seconds"] for s in summary["stages"].values())


def pipeline_figures(workload: str, data: str, smoke: bool, workdir: Path) -> dict:
    from flows.pipeline import resolve

    label = "smoke" if smoke else "full"
    config, _ = resolve(workload, data, smoke, None, None)
    if smoke:
        print(f"[{label}] warm-up: plain calls, untimed, so first imports count against neither side ...", flush=True)
        plain_run(config, str(workdir / "warm-up"))
    print(f"[{label}] plain function calls, cold ...", flush=True)
    plain_seconds, plain_digests = plain_run(config, str(workdir / f"{label}-plain"))
    flow_store = str(workdir / f"{label}-flow")
    print(f"[{label}] Prefect flow, cold ...", flush=True)
    cold_seconds, cold = flow_run(workload, data, smoke, flow_store)
    print(f"[{label}] Prefect flow, all cached ...", flush=True)
    cached_seconds, cached = flow_run(workload, data, smoke, flow_store)
    print(f"[{label}] Prefect flow, quantization changed ...", flush=True)
    requant_seconds, requant = flow_run(workload, data, smoke, flow_store, QUANTIZE_CHANGE)
    print(f"[{label}] laptop command, all cached (timed the second time: the first creates its Prefect database) ...", flush=True)
    home = workdir / f"prefect-home-{label}"
    cli_run(workload, data, smoke, flow_store, home)
    command_seconds = cli_run(workload, data, smoke, flow_store, home)
    # Every artifact but the evaluation (it holds measured latencies) must be bit-identical,
    # and both must have run the same steps.
    steps = list(cold["stages"]) + [step for step in plain_digests if step not in cold["stages"]]
    differ = [step for step in steps if step != "evaluate"
              and cold["stages"].get(step, {}).get("artifact") != plain_digests.get(step)]
    return {
        "cold_flow_seconds": round(cold_seconds, 2),
        "cold_stage_seconds": round(stage_seconds(cold), 2),
        "cached_flow_seconds": round(cached_seconds, 2),
        "cached_states": states(cached),
        "cached_command_seconds": round(command_seconds, 2),
        "quantize_change": QUANTIZE_CHANGE,
        "quantize_change_seconds": round(requant_seconds, 2),
        "quantize_change_states": states(requant),
        "plain_calls_seconds": round(plain_seconds, 2),
        "artifacts_differing_plain_vs_flow": differ,
        "ratios": {
            "cached_over_cold": round(cached_seconds / cold_seconds, 4),
            "cached_command_over_cold": round(command_seconds / cold_seconds, 4),
            "quantize_change_over_cold": round(requant_seconds / cold_seconds, 4),
            "orchestration_overhead": round((cold_seconds - plain_seconds) / plain_seconds, 4),
        },
    }


def alternated_overhead(data: str, pairs: int, workdir: Path) -> dict:
    """Plain calls vs the flow, alternated, on the full data with short training."""
    from flows.pipeline import resolve

    short = {"teacher": {"epochs": 0.1}, "student": {"epochs": 0.1}}
    config, _ = resolve("emotion", data, False, short, None)
    runs: dict[str, list[float]] = {"plain": [], "flow": []}
    for pair in range(pairs):
        for side in (("plain", "flow") if pair % 2 == 0 else ("flow", "plain")):
            store = str(workdir / f"alternated-{pair}-{side}")
            print(f"[alternated] pair {pair + 1}/{pairs}: {side} ...", flush=True)
            seconds = plain_run(config, store)[0] if side == "plain" else flow_run("emotion", data, False, store, short)[0]
            runs[side].append(round(seconds, 2))
    overheads = [round((f - p) / p, 4) for p, f in zip(runs["plain"], runs["flow"])]
    return {"overrides": short, "plain_seconds": runs["plain"], "flow_seconds": runs["flow"],
            "overhead_per_pair": overheads, "overhead_median": float(sorted(overheads)[len(overheads) // 2])}


def padding_throughput(data: str, steps: int, workdir: Path) -> dict:
    """Teacher fine-tuning speed (examples/s) under three padding schemes, same model and steps."""
    from artifacts.stage import Progress, run_stage
    from artifacts.store import ArtifactStore
    from flows.pipeline import resolve
    from tasks.stages import fetch, tokenize
    from tasks.formats import open_tokens
    from tasks.models.loading import load_classifier
    from tasks.training.loop import classification_loss, train

    config, _ = resolve("emotion", data, False, None, None)
    store = ArtifactStore(str(workdir / "throughput"))
    quiet = Progress(lambda message: None, bar=False)
    dataset = run_stage(fetch.STAGE, config.data, {}, store, quiet)
    tokens = open_tokens(store.open(run_stage(tokenize.STAGE, config.teacher_tokens, {"dataset": dataset}, store, quiet)))
    ids, labels = tokens.split("train")
    names, pad_id = tokens.labels, tokens.spec.pad_id
    epochs = steps * config.teacher.batch_size / len(ids)
    schemes = {
        "dynamic, length-grouped": {"group_by_length": True, "pad_to": None},
        "dynamic, random batches": {"group_by_length": False, "pad_to": None},
        "max_length 128": {"group_by_length": False, "pad_to": 128},
    }
    figures = {}
    for name, scheme in schemes.items():
        params = config.teacher.model_copy(update={"epochs": epochs, "group_by_length": scheme["group_by_length"]})
        model = load_classifier(config.teacher.model, names, seed=params.seed)
        warm = params.model_copy(update={"epochs": 2 * params.batch_size / len(ids)})
        train(model, ids, classification_loss(labels), warm, quiet, "warm-up", pad_id, pad_to=scheme["pad_to"])
        model = load_classifier(config.teacher.model, names, seed=params.seed)
        print(f"[throughput] {name}: {steps} steps ...", flush=True)
        history = train(model, ids, classification_loss(labels), params, quiet, name, pad_id, pad_to=scheme["pad_to"])
        figures[name] = {"examples_per_second": history["examples_per_second"], "padding_share": history["padding_share"],
                         "steps": history["steps"]}
    base = figures["max_length 128"]["examples_per_second"]
    for f in figures.values():
        f["speedup_over_max_length"] = round(f["examples_per_second"] / base, 2)
    return figures


def laptop_on_store(workload: str, data: str, store_root: str, workdir: Path, repeats: int = 3) -> dict:
    """The laptop command, all cached, on an existing store; the cold cost from the latest run's manifests."""
    from artifacts.runs import latest_run
    from artifacts.store import ArtifactStore

    store = ArtifactStore(store_root)
    home = workdir / "prefect-home-laptop"
    print(f"[laptop] {workload} on {store_root}: once untimed (it creates its Prefect database), then {repeats} timed ...", flush=True)
    cli_run(workload, data, False, store_root, home)
    seconds = [round(cli_run(workload, data, False, store_root, home), 2) for _ in range(repeats)]
    record = latest_run(store, workload)
    cold = {step: store.manifest(digest)["timings"]["seconds"] for step, digest in record.steps.items()}
    best = min(seconds)
    return {"workload": workload, "store": store_root, "command_seconds": seconds, "best_seconds": best,
            "cold_compute_seconds": round(sum(cold.values()), 1), "cold_compute_by_step": cold,
            "best_over_cold": round(best / sum(cold.values()), 5)}


def print_tables(results: dict) -> None:
    if "laptop" in results:
        r = results["laptop"]
        print("\n" + machine_line(results["machine"]))
        print(f"laptop command, all cached, {r['workload']} on {r['store']}: {', '.join(f'{s:.1f}' for s in r['command_seconds'])} s "
              f"(best {r['best_seconds']:.1f} s); the run's artifacts took {r['cold_compute_seconds']:.0f} s to compute "
              f"cold: {100 * r['best_over_cold']:.2f}% of it")
        return
    print("\n" + machine_line(results["machine"]))
    print(f"Temporary Prefect server start (once, outside the runs): {results['server_start_seconds']:.1f} s\n")
    print(f"{'preset':<7} {'cold flow':>10} {'plain calls':>12} {'overhead':>9} {'cached flow':>12} {'cached/cold':>12} "
          f"{'laptop cmd':>11} {'quant change':>13} {'qc/cold':>8} {'artifacts differ':>15}")
    for label, r in results["pipelines"].items():
        q = r["ratios"]
        print(f"{label:<7} {r['cold_flow_seconds']:>9.1f}s {r['plain_calls_seconds']:>11.1f}s "
              f"{100 * q['orchestration_overhead']:>8.1f}% {r['cached_flow_seconds']:>11.2f}s {100 * q['cached_over_cold']:>11.2f}% "
              f"{r['cached_command_seconds']:>10.1f}s {r['quantize_change_seconds']:>12.1f}s "
              f"{100 * q['quantize_change_over_cold']:>7.1f}% {', '.join(r['artifacts_differing_plain_vs_flow']) or 'none':>15}")
        recomputed = [s for s, state in r["quantize_change_states"].items() if state == "computed"]
        print(f"        quantization change recomputed: {', '.join(recomputed)}")
    if "alternated_overhead" in results:
        a = results["alternated_overhead"]
        print(f"\nalternated, {a['overrides']}: plain {a['plain_seconds']} s, flow {a['flow_seconds']} s, "
              f"overhead per pair {[f'{100 * o:.1f}%' for o in a['overhead_per_pair']]}")
    if "padding_throughput" in results:
        print(f"\n{'teacher training padding':<26} {'examples/s':>11} {'padding':>8} {'vs max_length':>14}")
        for name, f in results["padding_throughput"].items():
            print(f"{name:<26} {f['examples_per_second']:>11.1f} {100 * f['padding_share']:>7.1f}% {f['speedup_over_max_length']:>13.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "emotion"), help="emotion data folder")
    parser.add_argument("--smoke-only", action="store_true", help="only the smoke preset (about 2 minutes)")
    parser.add_argument("--overhead-pairs", type=int, default=2, help="alternated plain/flow pairs on the full data (0: skip)")
    parser.add_argument("--only", choices=["alternated", "laptop"], help="run only this measurement")
    parser.add_argument("--store", help="with --only laptop: a store holding a full run of the workload")
    parser.add_argument("--throughput-steps", type=int, default=40, help="teacher training steps per padding scheme")
    parser.add_argument("--out", type=Path, help="JSON output (default: bench/results/pipeline[-smoke|-alternated].json)")
    parser.add_argument("--workdir", type=Path, help="where the benchmark's stores go (default: a temporary folder)")
    args = parser.parse_args()
    suffix = "-smoke" if args.smoke_only else f"-{args.only}" if args.only else ""
    args.out = args.out or REPO / "bench" / "results" / f"pipeline{suffix}.json"
    os.environ.update(OFFLINE)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="distillery-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = str(workdir / "prefect-home")
    results: dict = {"machine": machine(), "pipelines": {}}

    from prefect import flow

    @flow(name="server-warm-up")
    def warm_up() -> None:
        return None

    if args.only == "laptop":
        if not args.store:
            parser.error("--only laptop needs --store: a store that holds a full emotion run")
        results["laptop"] = laptop_on_store("emotion", args.data, args.store, workdir)
        print_tables(results)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.out}")
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0
    results["server_start_seconds"] = round(timed(warm_up)[0], 2)
    presets = [("smoke", True)] + ([] if args.smoke_only else [("full", False)])
    for label, smoke in presets if not args.only else []:
        results["pipelines"][label] = pipeline_figures("emotion", args.data, smoke, workdir)
    if not args.smoke_only and args.overhead_pairs:
        results["alternated_overhead"] = alternated_overhead(args.data, args.overhead_pairs, workdir)
    if not args.smoke_only and not args.only:
        results["padding_throughput"] = padding_throughput(args.data, args.throughput_steps, workdir)
    print_tables(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
