"""`distillery serve` under load: request latency against the model's own batch-1 latency.

    python bench/serve.py --store .distillery --workload emotion [--seconds 15]

Starts the real server (`python -m flows.console serve`) on a free loopback port, serving
the workload's production model (else its latest), and measures, one after the other:
the INT8 model alone in this process (`Classifier.scores` of one text, the same code the
server calls), then HTTP clients each sending one test sentence per request, one at a time,
at concurrency 1 and 8. For each: p50/p95 request latency and requests per second. The
server's overhead is the ratio of its p50 at concurrency 1 to the model's own p50; at
concurrency 8 the batcher scores waiting requests together. Ratios compare within one run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from artifacts.store import ArtifactStore  # noqa: E402
from bench import command  # noqa: E402
from bench.machine import machine, machine_line  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(ms: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3)}


def model_alone(classifier, texts: list[str], seconds: float) -> dict:
    timings, deadline, i = [], time.time() + seconds, 0
    for text in texts[:10]:
        classifier.scores([text])
    while time.time() < deadline:
        started = time.perf_counter()
        classifier.scores([texts[i % len(texts)]])
        timings.append((time.perf_counter() - started) * 1000)
        i += 1
    return {**percentiles(timings), "requests": len(timings), "per_second": round(len(timings) / seconds, 1)}


def under_load(url: str, texts: list[str], clients: int, seconds: float) -> dict:
    import httpx

    timings: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def client(offset: int) -> None:
        with httpx.Client(timeout=30) as http:
            for text in texts[:5]:
                http.post(f"{url}/predict", json={"texts": [text]})  # warm-up, not timed
            i = offset
            while not stop.is_set():
                started = time.perf_counter()
                response = http.post(f"{url}/predict", json={"texts": [texts[i % len(texts)]]})
                elapsed = (time.perf_counter() - started) * 1000
                (timings.append(elapsed) if response.status_code == 200 else failures.append(str(response.status_code)))
                i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    return {**percentiles(timings), "requests": len(timings), "failures": len(failures),
            "per_second": round(len(timings) / seconds, 1)}


def main() -> None:
    parser = command.parser(__doc__, "serve", "the run whose model to serve (unused: the server serves production)",
                            "3 seconds per measurement instead of --seconds")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measurement")
    args = parser.parse_args()
    seconds = 3.0 if args.quick else args.seconds
    from flows.predict import load_classifier, serving_alias
    from artifacts.runs import find_run
    from tasks.formats import read_texts

    store = ArtifactStore(args.store)
    alias = serving_alias(store, args.workload)
    record = find_run(store, alias, args.workload)
    texts = read_texts(store.open(record.role("dataset")), "test")
    alone = model_alone(load_classifier(store, record), texts, seconds)

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "flows.console", "serve", "--name", args.workload, "--store",
                               str(store.root), "--port", str(port)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.time() + 120
        while True:
            try:
                httpx.get(f"{url}/health", timeout=2).raise_for_status()
                break
            except httpx.TransportError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.3)
        loads = {clients: under_load(url, texts, clients, seconds) for clients in (1, 8)}
        health = httpx.get(f"{url}/health", timeout=5).json()
    finally:
        server.terminate()
        server.wait(30)
    result = {"workload": args.workload, "alias": alias, "run": record.digest, "machine": machine(), "seconds": seconds,
              "model_alone": alone, "served": {str(k): v for k, v in loads.items()}, "batches": health["batches"]}
    rows = [("the INT8 model alone, in-process", alone, 1.0)] + [
        (f"`distillery serve`, {k} client{'s' if k > 1 else ''}", v, v["p50_ms"] / alone["p50_ms"]) for k, v in loads.items()]
    table = "\n".join([
        f"# `distillery serve`: {args.workload} ({alias}, run {record.digest[:12]})", "",
        f"One test sentence per request, {seconds:g} s per row, loopback HTTP. {machine_line(result['machine'])}.", "",
        "| what | p50 ms | p95 ms | requests/s | failed | p50 / model alone |", "|---|---:|---:|---:|---:|---:|",
        *[f"| {name} | {m['p50_ms']:.2f} | {m['p95_ms']:.2f} | {m['per_second']:.0f} | {m.get('failures', 0)} | {ratio:.1f}x |"
          for name, m, ratio in rows], "",
        f"The server scored {result['batches']} batches for {sum(v['requests'] for v in loads.values())} timed requests "
        f"(plus warm-up): concurrent requests share model calls.", ""])
    command.write_results(result, table, "serve", args)


if __name__ == "__main__":
    main()
