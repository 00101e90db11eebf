"""`distillery serve` holds (flows/serve.py): per-text errors, a body limit, a bounded queue, a
health that says when it is degraded, a token beyond loopback, Prometheus metrics, a request log
without texts, a typed response. In-process against the cold smoke run's production model."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from artifacts.store import ArtifactStore, StoreError
from flows import serve

NAME = "emotion-smoke"  # the cold smoke run's workload
TOKEN = "a-serve-token-0123456789"


@pytest.fixture
def holder(cold):
    return serve.ModelHolder(ArtifactStore(cold[0]), NAME, poll_seconds=3600)


def client(holder, **options) -> tuple[TestClient, list[dict]]:
    lines: list[dict] = []
    app = serve.create_app(holder, log=lambda line: lines.append(json.loads(line)), **options)
    return TestClient(app), lines


def test_a_lone_surrogate_is_a_422_naming_its_index_never_a_500(holder):
    web, log = client(holder)
    with web:
        body = '{"texts": ["i feel wonderful", "\\ud800 broken", "fine"]}'  # valid JSON, not valid Unicode
        answer = web.post("/predict", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"]["texts"] == [{"index": 1, "problem": answer.json()["detail"]["texts"][0]["problem"]}]
        assert "not valid Unicode" in answer.json()["detail"]["message"]
        good = web.post("/predict", json={"texts": ["i feel wonderful", "fine"]})
        assert good.status_code == 200 and [r["error"] for r in good.json()["results"]] == [None, None]
    assert [entry["status"] for entry in log] == [422, 200]
    assert all("text" not in entry for entry in log) and log[1]["texts"] == 2  # counts, never the texts


def test_a_text_the_model_fails_on_gets_its_error_and_the_others_their_labels(holder, monkeypatch):
    scores = holder.current.classifier.scores

    def fails_on_poison(texts):
        if any("poison" in t for t in texts):
            raise RuntimeError("the tokenizer choked")
        return scores(texts)

    monkeypatch.setattr(holder.current.classifier, "scores", fails_on_poison)
    web, _ = client(holder)
    with web:
        answer = web.post("/predict", json={"texts": ["i feel wonderful", "poison pill", "so sad today"]})
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert results[1]["error"] == "RuntimeError: the tokenizer choked" and results[1]["label"] is None
    assert results[0]["label"] in holder.current.classifier.labels and results[2]["label"] is not None


def test_a_body_too_large_is_a_413_declared_or_chunked(holder):
    web, _ = client(holder, max_body_bytes=10_000)
    with web:
        big = json.dumps({"texts": ["x" * 9_000, "y" * 9_000]})
        assert web.post("/predict", content=big, headers={"content-type": "application/json"}).status_code == 413
        chunked = web.post("/predict", content=iter([big[:5000].encode(), big[5000:].encode()]),
                           headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        assert web.post("/predict", json={"texts": ["fine"]}).status_code == 200


def test_a_full_queue_is_a_503_with_retry_after(holder):
    web, _ = client(holder, max_queue=1)
    with web:
        import asyncio

        batcher_queue_full = asyncio.QueueFull
        original = serve.Batcher.submit

        async def always_full(self, texts):
            raise batcher_queue_full

        serve.Batcher.submit = always_full
        try:
            answer = web.post("/predict", json={"texts": ["fine"]})
        finally:
            serve.Batcher.submit = original
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"


def test_the_queue_is_bounded():
    batcher = serve.Batcher(holder=None, max_batch=8, max_wait_ms=0, max_queue=2)
    assert batcher.queue.maxsize == 2


def test_health_says_degraded_while_a_new_model_cannot_be_loaded(holder, monkeypatch):
    web, _ = client(holder)
    with web:
        assert web.get("/health").json()["status"] == "ok"
        monkeypatch.setattr(holder, "_points_elsewhere", lambda: True)
        monkeypatch.setattr(holder, "_load", lambda: (_ for _ in ()).throw(StoreError("model.onnx fails its checksum")))
        holder.poll_seconds = 0.01
        thread = __import__("threading").Thread(target=holder.watch, daemon=True)
        thread.start()
        for _ in range(200):
            health = web.get("/health").json()
            if health["status"] == "degraded":
                break
            __import__("time").sleep(0.01)
        holder.stop()
        assert health["status"] == "degraded" and "fails its checksum" in health["problem"]
        assert health["run"] == holder.current.run  # still serving the old model
        assert web.post("/predict", json={"texts": ["fine"]}).status_code == 200


def test_a_token_is_required_when_given_and_checked(holder):
    web, _ = client(holder, token=TOKEN)
    with web:
        assert web.post("/predict", json={"texts": ["fine"]}).status_code == 401
        assert web.post("/predict", json={"texts": ["fine"]}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert web.get("/metrics").status_code == 401
        ok = web.post("/predict", json={"texts": ["fine"]}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert web.get("/health").status_code == 200  # a load balancer's probe carries no token


def test_a_public_host_without_a_token_is_refused_before_loading(cold, capsys, monkeypatch):
    monkeypatch.delenv(serve.TOKEN_ENV, raising=False)
    assert serve.main(["--name", NAME, "--store", str(cold[0]), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 answers other machines" in err and "--token-file" in err
    monkeypatch.setenv(serve.TOKEN_ENV, "short")
    assert serve.main(["--name", NAME, "--store", str(cold[0]), "--host", "0.0.0.0"]) == 2
    assert "shorter than 16" in capsys.readouterr().err
    assert serve.is_loopback("127.0.0.1") and serve.is_loopback("::1") and not serve.is_loopback("10.0.0.5")


def test_metrics_are_prometheus_text(holder):
    from prometheus_client.parser import text_string_to_metric_families

    web, _ = client(holder)
    with web:
        web.post("/predict", json={"texts": ["fine", "sad"]})
        web.post("/predict", json={"texts": [" "]})
        text = web.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {s.labels["status"]: s.value for s in families["distillery_serve_requests"].samples if s.name.endswith("_total")}
    assert requests == {"200": 1.0, "422": 1.0}
    assert [s.value for s in families["distillery_serve_texts"].samples if s.name.endswith("_total")] == [2.0]
    assert any(s.labels.get("run") == holder.current.run for s in families["distillery_serve_model"].samples)
    assert "distillery_serve_request_seconds" in families and "distillery_serve_batch_texts" in families


def test_the_response_schema_is_typed_in_the_openapi_page(holder):
    web, _ = client(holder)
    with web:
        spec = web.get("/openapi.json").json()
    answer = spec["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["$ref"].endswith("/PredictResponse")
    assert set(spec["components"]["schemas"]["TextResult"]["properties"]) == {"text", "label", "scores", "error"}
    assert {"413", "422", "503"} <= set(spec["paths"]["/predict"]["post"]["responses"])
