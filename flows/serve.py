"""`distillery serve`: the workload's production INT8 model behind an HTTP endpoint.

    distillery serve --name emotion [--host 127.0.0.1 --port 8300]
    curl -s localhost:8300/predict -d '{"texts": ["i feel wonderful today"]}'
    -> {"run": "3ee42f85f2fb...", "results": [{"text": ..., "label": "joy", "scores": {...}}]}

Built on what Prefect already brings (FastAPI, uvicorn). Three things make it a service:

- **It serves what was promoted.** The model is `<name>/production`, read the way `predict`
  reads it; with none it refuses to start, naming `distillery promote` (never `<name>/latest`,
  which moves for refused runs too). A watcher polls the alias; when a new
  run is promoted (or rolled back to), it loads that model beside the old one and then
  swaps one reference. A request holds the model it started with, so none in flight fails
  and none is answered by a half-loaded model; every answer names the run that made it.
- **Concurrent requests are batched.** Requests queue; one worker takes whatever is
  waiting (up to --max-batch texts) and scores it in one call, so 8 clients cost far
  less than 8 sequential model calls. It does not wait for company by default: requests
  gather while the model is busy, so a lone request pays nothing (--max-wait-ms trades
  latency for bigger batches). Dynamic INT8 quantizes
  a batch's activations with one scale, so a text's scores can differ in the last digits
  with the company it is batched with (as in the pipeline's own accuracy, see
  tasks/measure/metrics.py); its label rarely does.
- **Loopback by default.** It binds 127.0.0.1 unless --host says otherwise; it has no
  authentication of its own, so put a proxy with one in front before exposing it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from dataclasses import dataclass

from pydantic import BaseModel, Field

from artifacts.edge import add_store_argument, bad_input
from artifacts.runs import find_run
from artifacts.store import ArtifactStore, StoreError
from flows.predict import Classifier, load_classifier, serving_alias
from tasks.errors import DistilleryError

MAX_TEXTS, MAX_CHARS = 256, 10_000


class PredictRequest(BaseModel):
    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS, description="texts to classify")


@dataclass(frozen=True)
class Served:
    run: str  # the run record's digest
    alias: str
    classifier: Classifier


class ModelHolder:
    """The model being served, and the watcher that swaps in a newly promoted one."""

    def __init__(self, store: ArtifactStore, name: str, poll_seconds: float):
        self.store, self.name, self.poll_seconds = store, name, poll_seconds
        self.current = self._load()
        self.swaps = 0
        self._stop = threading.Event()

    def _load(self) -> Served:
        alias = serving_alias(self.store, self.name)
        record = find_run(self.store, alias, workload=self.name)
        return Served(record.digest, alias, load_classifier(self.store, record))

    def _points_elsewhere(self) -> bool:
        """Whether production names another run than the one served."""
        self.store.fs.invalidate_cache()  # an S3 filesystem remembers listings and sizes; aliases move
        return self.store.resolve_alias(serving_alias(self.store, self.name)).digest != self.current.run

    def watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                if not self._points_elsewhere():
                    continue
                new = self._load()  # loaded beside the old one; requests keep using the old meanwhile
            except Exception as exc:  # the store briefly away, a half-written model: keep serving, look again
                print(f"serve: could not look for or load a new model of {self.name} ({type(exc).__name__}: {exc}); "
                      f"still serving run {self.current.run[:12]}", file=sys.stderr, flush=True)
                continue
            self.current, self.swaps = new, self.swaps + 1
            print(f"serve: now serving run {new.run[:12]} ({new.alias})", file=sys.stderr)

    def stop(self) -> None:
        self._stop.set()


class Batcher:
    """Scores queued requests together: one model call per batch, in one worker thread."""

    def __init__(self, holder: ModelHolder, max_batch: int, max_wait_ms: float):
        self.holder, self.max_batch, self.max_wait = holder, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue()
        self.batches = 0

    async def submit(self, texts: list[str]) -> tuple[Served, list]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while sum(len(t) for t, _ in items) < self.max_batch:
                if not self.queue.empty():  # what gathered while the model was busy
                    items.append(self.queue.get_nowait())
                    continue
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            served = self.holder.current  # one model for the whole batch, whatever the watcher does meanwhile
            texts = [text for t, _ in items for text in t]
            try:
                scores = await loop.run_in_executor(None, served.classifier.scores, texts)
            except Exception as exc:  # a failure is every waiting request's answer, not the batcher's end
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            start = 0
            for t, future in items:
                if not future.done():
                    future.set_result((served, scores[start : start + len(t)]))
                start += len(t)


def create_app(holder: ModelHolder, max_batch: int = 64, max_wait_ms: float = 0.0):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException

    batcher = Batcher(holder, max_batch, max_wait_ms)

    @asynccontextmanager
    async def lifespan(app):
        worker = asyncio.create_task(batcher.run())
        watcher = threading.Thread(target=holder.watch, name="serve-watcher", daemon=True)
        watcher.start()
        yield
        holder.stop()
        worker.cancel()

    app = FastAPI(title=f"distillery: {holder.name}", lifespan=lifespan)

    @app.get("/health")
    def health() -> dict:
        served = holder.current
        return {"workload": holder.name, "run": served.run, "alias": served.alias, "labels": served.classifier.labels,
                "swaps": holder.swaps, "batches": batcher.batches}

    @app.post("/predict")
    async def predict(request: PredictRequest) -> dict:
        problems = [f"text {i}: {'empty' if not t.strip() else f'{len(t)} characters (at most {MAX_CHARS})'}"
                    for i, t in enumerate(request.texts) if not t.strip() or len(t) > MAX_CHARS]
        if problems:
            raise HTTPException(status_code=400, detail="; ".join(problems[:5]))
        served, scores = await batcher.submit(request.texts)
        labels = served.classifier.labels
        return {"run": served.run, "results": [
            {"text": text, "label": labels[int(row.argmax())],
             "scores": {name: round(float(p), 6) for name, p in zip(labels, row)}}
            for text, row in zip(request.texts, scores)]}

    return app


def main(argv: list[str] | None = None, prog: str = "distillery serve") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--name", default="emotion", help="the workload whose production model to serve")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind; the default answers this machine only")
    parser.add_argument("--port", type=int, default=8300, help="port to bind")
    parser.add_argument("--max-batch", type=int, default=64, help="most texts scored in one model call")
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="longest a request waits for others to batch with "
                        "(0: only what gathered while the model was busy)")
    parser.add_argument("--poll-seconds", type=float, default=2.0, help="how often to look for a newly promoted model")
    add_store_argument(parser)
    args = parser.parse_args(argv)
    try:
        if not 1 <= args.port <= 65535 or args.max_batch < 1 or args.max_wait_ms < 0 or args.poll_seconds <= 0:
            raise DistilleryError("--port must be 1-65535, --max-batch at least 1, --max-wait-ms at least 0 and "
                                  "--poll-seconds above 0")
        holder = ModelHolder(ArtifactStore(args.store), args.name, args.poll_seconds)
    except (DistilleryError, StoreError) as exc:
        return bad_input(str(exc))
    import uvicorn

    print(f"serve: {args.name} run {holder.current.run[:12]} ({holder.current.alias}) on http://{args.host}:{args.port}",
          file=sys.stderr, flush=True)
    started = time.time()
    uvicorn.run(create_app(holder, args.max_batch, args.max_wait_ms), host=args.host, port=args.port, log_level="warning")
    print(f"serve: stopped after {time.time() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
