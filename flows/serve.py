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
- **It holds.** A text it cannot take (empty, too long, not encodable as UTF-8, such as a lone
  surrogate) is a 422 naming its index, before any model call; should the model still fail on a
  batch, each request is scored on its own and a text that fails gets its error in a 200 answer,
  so one text never fails the others. A body above --max-body-mb is a 413; a full queue
  (--max-queue requests) a 503 with Retry-After. `/health` says `degraded`, with the reason,
  while a newly promoted model cannot be loaded (the old one is still served). `/metrics` is
  Prometheus text (requests by status, texts, errors, latency and batch-size histograms, the
  run served); each request is a JSON line on stderr without its texts (--log-texts adds them).
- **Loopback by default.** It binds 127.0.0.1 unless --host says otherwise. Any other address
  needs a bearer token (--token-file, or env DISTILLERY_SERVE_TOKEN), checked in constant time
  on every endpoint but `/health`; with a token given it is required on loopback too.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from artifacts.edge import add_store_argument, bad_input
from artifacts.runs import find_run
from artifacts.store import ArtifactStore, StoreError
from flows.predict import Classifier, load_classifier, serving_alias
from tasks.errors import DistilleryError

MAX_TEXTS, MAX_CHARS = 256, 10_000
TOKEN_ENV = "DISTILLERY_SERVE_TOKEN"


class PredictRequest(BaseModel):
    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS, description="texts to classify")


class TextResult(BaseModel):
    text: str
    label: str | None = Field(None, description="the predicted class; None when the text could not be scored")
    scores: dict[str, float] = Field(default_factory=dict, description="each class's probability")
    error: str | None = Field(None, description="why this text could not be scored (the others were)")


class PredictResponse(BaseModel):
    run: str = Field(description="the run record whose INT8 model answered")
    results: list[TextResult]


class HealthResponse(BaseModel):
    status: str = Field(description="ok, or degraded: a newly promoted model could not be loaded; the old one is served")
    problem: str | None = None
    workload: str
    run: str
    alias: str
    labels: list[str]
    swaps: int
    batches: int


def text_problems(texts: list[str]) -> list[dict]:
    """Each text the model cannot take, by index: empty, too long, or not encodable as UTF-8."""
    problems = []
    for i, text in enumerate(texts):
        if not text.strip():
            problems.append({"index": i, "problem": "empty"})
        elif len(text) > MAX_CHARS:
            problems.append({"index": i, "problem": f"{len(text)} characters (at most {MAX_CHARS})"})
        else:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone surrogate: JSON allows it, no tokenizer does
                problems.append({"index": i, "problem": f"not valid Unicode ({exc.reason} at character {exc.start})"})
    return problems


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
        self.problem: str | None = None  # why the newest production model is not the one served
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
                    self.problem = None
                    continue
                new = self._load()  # loaded beside the old one; requests keep using the old meanwhile
            except Exception as exc:  # the store briefly away, a half-written model: keep serving, look again
                self.problem = (f"could not look for or load a new model of {self.name} ({type(exc).__name__}: {exc}); "
                                f"still serving run {self.current.run[:12]}")
                print(f"serve: {self.problem}", file=sys.stderr, flush=True)
                continue
            self.current, self.swaps, self.problem = new, self.swaps + 1, None
            print(f"serve: now serving run {new.run[:12]} ({new.alias})", file=sys.stderr)

    def stop(self) -> None:
        self._stop.set()


class Batcher:
    """Scores queued requests together: one model call per batch, in one worker thread."""

    def __init__(self, holder: ModelHolder, max_batch: int, max_wait_ms: float, max_queue: int = 1024,
                 on_batch=None):
        self.holder, self.max_batch, self.max_wait = holder, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=max_queue)  # bounded: a flood is refused, not buffered
        self.batches = 0
        self.on_batch = on_batch or (lambda size: None)

    async def submit(self, texts: list[str]) -> tuple[Served, list]:
        """(the model that answered, one row of scores or an Exception per text); asyncio.QueueFull when full."""
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((texts, future))
        return await future

    @staticmethod
    def _one_by_one(served: Served, texts: list[str]) -> list:
        """Each text scored alone: a row of scores, or the exception that text raised."""
        rows = []
        for text in texts:
            try:
                rows.append(served.classifier.scores([text])[0])
            except Exception as exc:  # noqa: BLE001 - that text's answer
                rows.append(exc)
        return rows

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
            try:
                await self._score(loop, items)
            except Exception as exc:  # noqa: BLE001 - whatever went wrong is each waiting request's answer,
                for _, future in items:  # never the batcher's end (its requests would wait forever)
                    if not future.done():
                        future.set_exception(exc)

    async def _score(self, loop, items: list) -> None:
        served = self.holder.current  # one model for the whole batch, whatever the watcher does meanwhile
        texts = [text for t, _ in items for text in t]
        try:
            scores = list(await loop.run_in_executor(None, served.classifier.scores, texts))
        except Exception:  # noqa: BLE001 - one text must not fail the batch: each alone, errors per text
            scores = await loop.run_in_executor(None, self._one_by_one, served, texts)
        self.batches += 1
        self.on_batch(len(texts))
        start = 0
        for t, future in items:
            if not future.done():
                future.set_result((served, scores[start : start + len(t)]))
            start += len(t)


class ServeMetrics:
    """What `/metrics` exposes, in a registry of its own (Prometheus text format)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("distillery_serve_requests", "predict requests by HTTP status", ["status"],
                                registry=self.registry)
        self.texts = Counter("distillery_serve_texts", "texts scored", registry=self.registry)
        self.errors = Counter("distillery_serve_text_errors", "texts that could not be scored", registry=self.registry)
        self.latency = Histogram("distillery_serve_request_seconds", "predict request latency", registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.batch = Histogram("distillery_serve_batch_texts", "texts per model call", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.model = Gauge("distillery_serve_model", "the run served (1 for the current run)", ["run"],
                           registry=self.registry)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def create_app(holder: ModelHolder, max_batch: int = 64, max_wait_ms: float = 0.0, token: str | None = None,
               max_body_bytes: int = 4_000_000, max_queue: int = 1024, log_texts: bool = False, log=None):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse, Response

    metrics = ServeMetrics()
    batcher = Batcher(holder, max_batch, max_wait_ms, max_queue, on_batch=metrics.batch.observe)
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))

    @asynccontextmanager
    async def lifespan(app):
        worker = asyncio.create_task(batcher.run())
        watcher = threading.Thread(target=holder.watch, name="serve-watcher", daemon=True)
        watcher.start()
        yield
        holder.stop()
        worker.cancel()

    app = FastAPI(title=f"distillery: {holder.name}", lifespan=lifespan)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token is not None and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return JSONResponse({"detail": "a bearer token is required (Authorization: Bearer ...)"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_body_bytes):
            return JSONResponse({"detail": f"the body is larger than {max_body_bytes} bytes"}, status_code=413)
        if declared is None and request.method == "POST":  # chunked: counted as it arrives
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_body_bytes:
                    return JSONResponse({"detail": f"the body is larger than {max_body_bytes} bytes"}, status_code=413)
            request._body = body  # starlette reads it from here
        return await call_next(request)

    @app.get("/health", response_model=HealthResponse)
    def health() -> HealthResponse:
        served = holder.current
        return HealthResponse(status="degraded" if holder.problem else "ok", problem=holder.problem,
                              workload=holder.name, run=served.run, alias=served.alias, labels=served.classifier.labels,
                              swaps=holder.swaps, batches=batcher.batches)

    @app.get("/metrics", response_class=Response)
    def prometheus():
        metrics.model.clear()
        metrics.model.labels(run=holder.current.run).set(1)
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.post("/predict", response_model=PredictResponse,
              responses={413: {"description": "body too large"}, 422: {"description": "a text it cannot take, by index"},
                         503: {"description": "the queue is full: retry after Retry-After seconds"}})
    async def predict(request: PredictRequest) -> PredictResponse:
        started, status, answer = time.perf_counter(), 200, None
        try:
            problems = text_problems(request.texts)
            if problems:
                status = 422
                raise HTTPException(status_code=422, detail={"texts": problems[:20], "message": "; ".join(
                    f"text {p['index']}: {p['problem']}" for p in problems[:5])})
            try:
                served, scores = await batcher.submit(request.texts)
            except asyncio.QueueFull:
                status = 503
                raise HTTPException(status_code=503, detail="the queue is full: retry shortly",
                                    headers={"Retry-After": "1"}) from None
            except Exception as exc:  # the model could score nothing at all: unavailable, said so, not a traceback
                status = 503
                raise HTTPException(status_code=503, detail=f"the model failed ({type(exc).__name__}: {exc})",
                                    headers={"Retry-After": "5"}) from None
            labels = served.classifier.labels
            results = []
            for text, row in zip(request.texts, scores):
                if isinstance(row, Exception):
                    results.append(TextResult(text=text, error=f"{type(row).__name__}: {row}"))
                else:
                    results.append(TextResult(text=text, label=labels[int(row.argmax())],
                                              scores={name: round(float(p), 6) for name, p in zip(labels, row)}))
            metrics.texts.inc(len(results))
            metrics.errors.inc(sum(r.error is not None for r in results))
            answer = PredictResponse(run=served.run, results=results)
            return answer
        finally:
            seconds = time.perf_counter() - started
            metrics.requests.labels(status=str(status)).inc()
            metrics.latency.observe(seconds)
            entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "status": status,
                     "texts": len(request.texts), "ms": round(seconds * 1000, 3),
                     "run": answer.run if answer else None,
                     "errors": sum(r.error is not None for r in answer.results) if answer else None}
            if log_texts:
                entry["text"] = request.texts
            log(json.dumps(entry))

    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token_file: str | None) -> str | None:
    """The bearer token from --token-file, else env DISTILLERY_SERVE_TOKEN, else None; a short one is refused."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise DistilleryError(f"--token-file {token_file}: cannot be read ({exc})") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip() or None
    if token is not None and len(token) < 16:
        raise DistilleryError("the bearer token is shorter than 16 characters: use e.g. "
                              "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return token


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
    parser.add_argument("--token-file", help=f"a file holding the bearer token every request but /health must carry "
                        f"(default: env {TOKEN_ENV}); required for any --host but loopback")
    parser.add_argument("--max-body-mb", type=float, default=4.0, help="largest request body; larger ones get 413")
    parser.add_argument("--max-queue", type=int, default=1024, help="requests waiting at most; more get 503 with Retry-After")
    parser.add_argument("--log-texts", action="store_true", help="put the texts in the JSON-lines request log (default: counts only)")
    add_store_argument(parser)
    args = parser.parse_args(argv)
    try:
        if (not 1 <= args.port <= 65535 or args.max_batch < 1 or args.max_wait_ms < 0 or args.poll_seconds <= 0
                or args.max_body_mb <= 0 or args.max_queue < 1):
            raise DistilleryError("--port must be 1-65535, --max-batch and --max-queue at least 1, --max-wait-ms at "
                                  "least 0, --poll-seconds and --max-body-mb above 0")
        token = read_token(args.token_file)
        if token is None and not is_loopback(args.host):
            raise DistilleryError(f"--host {args.host} answers other machines, and serve has no other authentication: "
                                  f"give a bearer token (--token-file FILE or env {TOKEN_ENV}), or bind 127.0.0.1")
        holder = ModelHolder(ArtifactStore(args.store), args.name, args.poll_seconds)
    except (DistilleryError, StoreError) as exc:
        return bad_input(str(exc))
    import uvicorn

    print(f"serve: {args.name} run {holder.current.run[:12]} ({holder.current.alias}) on http://{args.host}:{args.port}",
          file=sys.stderr, flush=True)
    started = time.time()
    app = create_app(holder, args.max_batch, args.max_wait_ms, token=token, max_body_bytes=int(args.max_body_mb * 1e6),
                     max_queue=args.max_queue, log_texts=args.log_texts)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    print(f"serve: stopped after {time.time() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
