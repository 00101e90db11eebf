"""`distillery export` (flows/export.py): the production INT8 student as a Hugging Face-style folder
that AutoTokenizer and onnxruntime load, classifying as `predict` does, with a model card."""

from __future__ import annotations

import json

import numpy as np
import yaml

from artifacts.store import ArtifactStore
from conftest import EMOTION_LABELS, store_copy, tree_state
from flows import console
from flows.predict import predict

NAME = "emotion-smoke"
TEXTS = ["i feel wonderful today", "this is so unfair and i am furious", "i miss you so much"]


def test_the_exported_folder_loads_and_classifies_as_predict_does(cold, tmp_path, capsys):
    store = cold[0]
    before = tree_state(store)
    out = tmp_path / "export"
    assert console.main(["export", NAME, "--out", str(out), "--store", str(store)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert tree_state(store) == before  # exporting reads only
    config = json.loads((out / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(6)] == EMOTION_LABELS and config["label2id"]["joy"] == 1
    from onnxruntime import InferenceSession
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    session = InferenceSession(str(out / "model.onnx"))
    expected = predict(ArtifactStore(store), f"{NAME}/production", TEXTS)
    for text, answer in zip(TEXTS, expected):
        batch = tokenizer([text], return_tensors="np", truncation=True, max_length=config["distillery"]["max_length"])
        logits = session.run(None, {"input_ids": batch["input_ids"].astype(np.int64),
                                    "attention_mask": batch["attention_mask"].astype(np.int64)})[0]
        assert config["id2label"][str(int(logits.argmax()))] == answer["label"], text
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    metrics = {m["type"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
    evaluation = cold[2].summary["metrics"]["student_int8"]
    assert metrics["accuracy"] == round(evaluation["accuracy"], 4) and metrics["f1"] == round(evaluation["macro_f1"], 4)
    assert front["license"] == "apache-2.0" and front["pipeline_tag"] == "text-classification"
    assert "teacher FP32 (PyTorch)" in card and "measured on" in card and cold[2].summary["run"] in card


def test_export_refuses_a_workload_without_production_and_a_used_folder(cold, tmp_path, capsys):
    store = store_copy(cold, tmp_path)
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    assert console.main(["export", NAME, "--out", str(used), "--store", str(store)]) == 2
    assert "is not an empty folder" in capsys.readouterr().err and (used / "keep.txt").read_text() == "mine"
    (store / "aliases" / NAME / "production.json").unlink()
    assert console.main(["export", NAME, "--out", str(tmp_path / "new"), "--store", str(store)]) == 2
    assert "no production model" in capsys.readouterr().err and not (tmp_path / "new").exists()
