"""Each stage as a plain function (no Prefect), on a slice of real emotion data with tiny models."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from artifacts.stage import Progress, run_stage
from artifacts.store import ArtifactStore
from conftest import EMOTION_LABELS, write_emotion_slice
from tasks import augment, data, distil, evaluate, export, quantize, teacher, tokenize
from tasks.batching import length_grouped_batches, pad, random_batches
from tasks.errors import DistilleryError
from tasks.export import onnx_logits, onnx_session
from tasks.models import load_classifier, load_config, load_trained
from tasks.timing import interleaved_latency_ms, predictions
from tasks.tokenize import read_tokens


def student_inputs(refs: dict) -> dict:
    return {name: refs[name] for name in distil.STAGE.inputs}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, emotion_dir):
    """Real stages run once, in order, on 400 training tweets with a tiny teacher."""
    root = tmp_path_factory.mktemp("stages")
    store = ArtifactStore(root / "store")
    folder = write_emotion_slice(emotion_dir, root / "emotion", {"train": 400, "val": 100, "test": 100})
    refs = {"dataset": run_stage(data.STAGE, data.DataParams(source=str(folder), label_names=EMOTION_LABELS), {}, store)}
    refs["tokens"] = run_stage(tokenize.STAGE, tokenize.TokenizeParams(tokenizer="tiny", max_length=32), {"dataset": refs["dataset"]}, store)
    refs["teacher"] = run_stage(teacher.STAGE, teacher.TeacherParams(model="tiny", epochs=6, learning_rate=3e-3, batch_size=16), {"tokens": refs["tokens"]}, store)
    refs["augmented"] = run_stage(augment.STAGE, augment.AugmentParams(), {"tokens": refs["tokens"], "teacher": refs["teacher"]}, store)
    refs["student"] = run_stage(distil.STAGE, distil.StudentParams(epochs=2, learning_rate=2e-3, batch_size=16), student_inputs(refs), store)
    refs["onnx"] = run_stage(export.STAGE, export.ExportParams(), {"model": refs["student"], "tokens": refs["tokens"]}, store)
    return store, refs


def test_tokenize_truncates_and_keeps_real_lengths(pipeline):
    store, refs = pipeline
    ids, labels = read_tokens(store.open(refs["tokens"]), "train")
    lengths = [len(s) for s in ids]
    assert max(lengths) <= 32 and min(lengths) < 32  # truncated, not padded
    assert all(s[0] == 101 and s[-1] == 102 for s in ids)  # [CLS] ... [SEP]
    assert len(ids) == len(labels) == 400
    stats = store.manifest(refs["tokens"])["metrics"]
    assert stats["train"]["truncated"] == sum(1 for n in lengths if n == 32) or stats["train"]["truncated"] >= 0
    assert (store.open(refs["tokens"]) / "tokenizer" / "tokenizer.json").exists()


def test_length_grouped_batches_pad_far_less_than_random(emotion_dir):
    from tasks.models import load_tokenizer

    frame, _ = data.load_splits(data.DataParams(source=str(emotion_dir), label_names=EMOTION_LABELS, max_train_rows=3000))
    ids = load_tokenizer("minilm")(frame["train"]["text"].tolist(), truncation=True, max_length=64)["input_ids"]
    ids = [np.asarray(s) for s in ids]

    def padded_share(batches):
        total = sum(pad(ids, b)[1].numel() for b in batches)
        return 1 - sum(len(s) for s in ids) / total

    rng = np.random.default_rng(0)
    grouped = length_grouped_batches([len(s) for s in ids], 32, rng)
    assert sorted(np.concatenate(grouped).tolist()) == list(range(len(ids)))  # every example once
    assert padded_share(grouped) < 0.1 < 0.4 < padded_share(random_batches(len(ids), 32, rng))


def test_teacher_training_lowers_the_loss_and_saves_safetensors(pipeline):
    store, refs = pipeline
    folder = store.open(refs["teacher"])
    metrics = store.manifest(refs["teacher"])["metrics"]
    assert metrics["final_loss"] < 0.9 * np.log(6)  # below the loss of uniform guessing
    assert (folder / "model" / "model.safetensors").exists()
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))  # no pickles
    model = load_trained(folder / "model")
    assert model.config.id2label[0] == "sadness" and model.config.num_hidden_layers == 2


def test_student_is_a_layer_subset_of_the_teacher():
    teacher_model = load_classifier("tiny", EMOTION_LABELS)
    student = distil.shrink(teacher_model, [1])
    assert student.config.num_hidden_layers == 1
    assert torch.equal(student.bert.encoder.layer[0].output.dense.weight, teacher_model.bert.encoder.layer[1].output.dense.weight)
    assert torch.equal(student.classifier.weight, teacher_model.classifier.weight)
    assert teacher_model.config.num_hidden_layers == 2  # the teacher is left whole


def test_distillation_moves_the_student_towards_the_teacher(pipeline):
    from tasks.training import predict_logits

    store, refs = pipeline
    assert store.manifest(refs["student"])["metrics"]["layers"] == [0]
    ids, _ = read_tokens(store.open(refs["tokens"]), "train")
    teacher_model = load_trained(store.open(refs["teacher"]) / "model")
    target = predict_logits(teacher_model, ids)
    untrained = predict_logits(distil.shrink(teacher_model, [0]), ids)
    trained = predict_logits(load_trained(store.open(refs["student"]) / "model"), ids)
    assert ((trained - target) ** 2).mean() < 0.5 * ((untrained - target) ** 2).mean()
    assert (trained.argmax(1) == target.argmax(1)).mean() > (untrained.argmax(1) == target.argmax(1)).mean()


@pytest.mark.parametrize("loss,weight", [("mse", 0.5), ("kl", 0.0), ("kl", 0.5)])
def test_distillation_losses(loss, weight):
    p = distil.StudentParams(loss=loss, hard_label_weight=weight, temperature=2.0)
    teacher_logits = torch.tensor([[2.0, 0.0, -1.0]])
    labels = torch.tensor([0])
    assert distil.distillation_loss(p, teacher_logits.clone(), teacher_logits, labels).item() == pytest.approx(
        weight * torch.nn.functional.cross_entropy(teacher_logits, labels).item(), abs=1e-6)
    assert distil.distillation_loss(p, torch.zeros(1, 3), teacher_logits, labels) > 0


def test_hidden_state_loss_compares_copied_layers_over_real_tokens_only():
    torch.manual_seed(0)
    teacher_hidden = [torch.randn(2, 5, 8) for _ in range(5)]  # embeddings + 4 layers
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    student_hidden = [teacher_hidden[0], teacher_hidden[1], teacher_hidden[3]]  # layers [0, 2]
    assert distil.hidden_state_loss(student_hidden, teacher_hidden, [0, 2], mask).item() == 0
    padded_changed = [h.clone() for h in student_hidden]
    padded_changed[2][0, 3:] += 10  # only padding positions differ
    assert distil.hidden_state_loss(padded_changed, teacher_hidden, [0, 2], mask).item() == 0
    assert distil.hidden_state_loss(student_hidden, teacher_hidden, [1, 2], mask).item() > 0.5


def test_intermediate_layer_matching_pulls_student_layers_towards_the_teachers(pipeline):
    store, refs = pipeline
    ids, _ = read_tokens(store.open(refs["tokens"]), "validation")
    input_ids, mask = pad(ids, list(range(len(ids))))
    teacher_model = load_trained(store.open(refs["teacher"]) / "model")

    def hidden_gap(student_ref) -> float:
        student = load_trained(store.open(student_ref) / "model")
        with torch.no_grad():
            s = student(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
            t = teacher_model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
        return distil.hidden_state_loss(s, t, [0], mask).item()

    matched = run_stage(distil.STAGE, distil.StudentParams(epochs=2, learning_rate=2e-3, batch_size=16, hidden_weight=5.0),
                        student_inputs(refs), store)
    assert store.manifest(matched)["params"]["hidden_weight"] == 5.0
    assert hidden_gap(matched) < 0.5 * hidden_gap(refs["student"])


def test_student_deeper_than_teacher_is_refused():
    with pytest.raises(DistilleryError, match="do not fit a 2-layer teacher"):
        distil.student_layers(distil.StudentParams(layers=[0, 2]), 2)
    with pytest.raises(ValueError, match="distinct, ascending"):
        distil.StudentParams(layers=[2, 0])
    assert distil.student_layers(distil.StudentParams(), 6) == [0, 2, 4]


def test_onnx_export_matches_pytorch_at_any_batch_and_length(pipeline):
    store, refs = pipeline
    model = load_trained(store.open(refs["student"]) / "model")
    session = onnx_session(store.open(refs["onnx"]) / "model.onnx")
    ids, _ = read_tokens(store.open(refs["tokens"]), "test")
    for batch in ([0], [1, 2, 3], list(range(40))):
        input_ids, mask = pad(ids, batch)
        with torch.inference_mode():
            expected = model(input_ids=input_ids, attention_mask=mask).logits.numpy()
        assert np.abs(onnx_logits(session, input_ids.numpy(), mask.numpy()) - expected).max() < 1e-4
    assert store.manifest(refs["onnx"])["metrics"]["parity_max_abs_diff"] < 1e-4


def test_onnx_export_fuses_each_layer_into_onnxruntime_transformer_kernels(pipeline):
    store, refs = pipeline
    layers = load_config(str(store.open(refs["student"]) / "model")).num_hidden_layers
    fused_graph = onnx.load(str(store.open(refs["onnx"]) / "model.onnx")).graph
    fused_ops = [node.op_type for node in fused_graph.node]
    assert fused_ops.count("Attention") == layers and fused_ops.count("EmbedLayerNormalization") == 1
    assert store.manifest(refs["onnx"])["metrics"]["fused_ops"]["Attention"] == layers
    plain = run_stage(export.STAGE, export.ExportParams(fuse=False), {"model": refs["student"], "tokens": refs["tokens"]}, store)
    plain_graph = onnx.load(str(store.open(plain) / "model.onnx")).graph
    assert "Attention" not in {node.op_type for node in plain_graph.node}
    assert len(fused_graph.node) < 0.5 * len(plain_graph.node)
    # Same model either way: both graphs give the same logits on a padded batch.
    ids, _ = read_tokens(store.open(refs["tokens"]), "test")
    input_ids, mask = (t.numpy() for t in pad(ids, range(24)))
    logits = [onnx_logits(onnx_session(store.open(ref) / "model.onnx"), input_ids, mask) for ref in (refs["onnx"], plain)]
    assert np.abs(logits[0] - logits[1]).max() < 1e-4


@pytest.mark.parametrize("approach,fmt", [("dynamic", None), ("static", "QOperator"), ("static", "QDQ")])
def test_inc_quantization_gives_a_smaller_int8_model_that_agrees(pipeline, approach, fmt):
    store, refs = pipeline
    ref = run_stage(quantize.STAGE, quantize.QuantizeParams(approach=approach, quant_format=fmt, calibration_samples=64),
                    {"onnx": refs["onnx"], "tokens": refs["tokens"]}, store)
    folder = store.open(ref)
    graph = onnx.load(str(folder / "model.onnx")).graph
    int8_ops = {"MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul", "QuantizeLinear"}
    assert int8_ops & {node.op_type for node in graph.node}
    metrics = store.manifest(ref)["metrics"]
    assert metrics["size_bytes"] < 0.6 * store.manifest(refs["onnx"])["metrics"]["size_bytes"]
    assert metrics["validation_agreement"] >= 0.9
    assert not Path("nc_workspace").exists()  # INC's scratch space stays out of the working directory


def test_inc_returning_none_is_a_clear_failure(pipeline, monkeypatch):
    store, refs = pipeline

    class WrongInputs(quantize.CalibrationBatches):
        def __iter__(self):  # an input the graph does not have: INC logs, swallows and returns None
            for ids, mask in self.batches:
                yield {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": ids.numpy()}, None

    monkeypatch.setattr(quantize, "CalibrationBatches", WrongInputs)
    before = store.digests()
    with pytest.raises(RuntimeError, match="fit returned None"):
        run_stage(quantize.STAGE, quantize.QuantizeParams(approach="static", calibration_samples=16),
                  {"onnx": refs["onnx"], "tokens": refs["tokens"]}, store)
    assert store.digests() == before


def test_models_are_timed_in_turns_and_report_their_median_round():
    calls = []

    def predictor(name):
        def predict(ids, mask):
            calls.append(name)
            return np.zeros((len(ids), 2))
        return predict

    sentences = [np.arange(5), np.arange(7), np.arange(3)]
    latency = interleaved_latency_ms({"a": predictor("a"), "b": predictor("b")}, sentences, rounds=3, warmup=1)
    assert calls == (["a"] * 4 + ["b"] * 4) * 3  # one warm-up and three timed calls per model per round
    for m in latency.values():
        assert len(m["latency_p50_rounds_ms"]) == 3
        assert m["latency_p50_ms"] == sorted(m["latency_p50_rounds_ms"])[1]


def test_ort_baseline_is_measured_beside_inc_on_the_same_sentences(pipeline):
    store, refs = pipeline
    ref = run_stage(quantize.STAGE, quantize.QuantizeParams(latency_sentences=20), {"onnx": refs["onnx"], "tokens": refs["tokens"]}, store)
    metrics = store.manifest(ref)["metrics"]
    baseline, fp32 = metrics["ort_quantize_dynamic"], metrics["fp32"]
    assert 0 <= baseline["validation_accuracy"] <= 1 and baseline["latency_p50_ms"] > 0
    assert baseline["size_bytes"] < 0.6 * store.manifest(refs["onnx"])["metrics"]["size_bytes"]
    assert metrics["int8"]["latency_p95_ms"] >= metrics["int8"]["latency_p50_ms"] > 0 and fp32["latency_p50_ms"] > 0
    assert sorted(p.name for p in store.open(ref).iterdir()) == ["config.json", "manifest.json", "model.onnx"]  # the baseline is not kept
    # Without the baseline the same INT8 model is made (same digest), and no baseline is built.
    lines = []
    without = run_stage(quantize.STAGE, quantize.QuantizeParams(baseline=False, latency_sentences=20),
                        {"onnx": refs["onnx"], "tokens": refs["tokens"]}, store, Progress(lines.append, bar=False))
    assert without.digest == ref.digest
    assert any("INT8 validation accuracy" in line for line in lines) and not any("baseline" in line for line in lines)


def test_accuracy_aware_tuning_keeps_validation_accuracy_within_tolerance(pipeline):
    store, refs = pipeline
    ref = run_stage(quantize.STAGE, quantize.QuantizeParams(accuracy_tolerance=0.02, max_trials=5, baseline=False, latency_sentences=10),
                    {"onnx": refs["onnx"], "tokens": refs["tokens"]}, store)
    metrics = store.manifest(ref)["metrics"]
    assert metrics["validation_accuracy_int8"] >= (1 - 0.02) * metrics["validation_accuracy_fp32"] - 1e-9


def test_accuracy_aware_tuning_that_cannot_meet_its_target_fails_clearly(pipeline, monkeypatch):
    store, refs = pipeline
    calls = []

    def strict(sequences, labels):
        def evaluate(model) -> float:  # the first call scores FP32; every INT8 candidate scores far lower
            calls.append(1)
            return 1.0 if len(calls) == 1 else 0.5
        return evaluate

    monkeypatch.setattr(quantize, "validation_accuracy", strict)
    before = store.digests()
    with pytest.raises(RuntimeError, match=r"fit returned None: no candidate within 1\.0% .* --quantize-max-trials"):
        run_stage(quantize.STAGE, quantize.QuantizeParams(accuracy_tolerance=0.01, max_trials=3, baseline=False),
                  {"onnx": refs["onnx"], "tokens": refs["tokens"]}, store)
    assert len(calls) >= 2 and store.digests() == before


def test_metric_module_against_hand_computed_values():
    import evaluate as hf_evaluate

    metric = hf_evaluate.load(str(evaluate.METRIC_MODULE))
    result = metric.compute(predictions=[0, 0, 1, 2, 2, 2], references=[0, 1, 1, 2, 2, 0], num_labels=3)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["confusion_matrix"] == [[1, 0, 1], [1, 1, 0], [0, 0, 2]]
    # class 0: p=1/2 r=1/2; class 1: p=1 r=1/2; class 2: p=2/3 r=1
    assert result["per_class_f1"] == pytest.approx([0.5, 2 / 3, 0.8])
    assert result["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)


def test_evaluate_reports_quality_speed_and_size_for_three_models(pipeline):
    store, refs = pipeline
    int8 = run_stage(quantize.STAGE, quantize.QuantizeParams(), {"onnx": refs["onnx"], "tokens": refs["tokens"]}, store)
    report = run_stage(evaluate.STAGE, evaluate.EvaluateParams(latency_sentences=20, warmup=2, rounds=2),
                       {"tokens": refs["tokens"], "teacher": refs["teacher"], "student": refs["student"], "student_int8": int8}, store)
    metrics = json.loads((store.open(report) / "metrics.json").read_text())
    assert set(metrics["models"]) == {"teacher", "student", "student_int8"}
    for m in metrics["models"].values():
        assert sum(map(sum, m["confusion_matrix"])) == 100 == metrics["test_rows"]
        assert 0 < m["latency_p50_ms"] <= m["latency_p95_ms"]
        assert len(m["latency_p50_rounds_ms"]) == 2 and min(m["latency_p50_rounds_ms"]) <= m["latency_p50_ms"]
        assert len(m["per_class_f1"]) == 6 and 0 <= m["macro_f1"] <= 1
    assert metrics["models"]["student_int8"]["size_bytes"] < metrics["models"]["student"]["size_bytes"]


def test_unknown_models_fail_with_the_offline_fix(tmp_path):
    with pytest.raises(DistilleryError, match="does not exist"):
        load_config(str(tmp_path / "no-such-checkpoint"))
    with pytest.raises(DistilleryError) as error:
        load_config("no-such-org/no-such-model")
    assert "Hub" in str(error.value) and "'minilm'" in str(error.value)
    assert load_config("minilm").num_hidden_layers == 6


# --- augmentation (Tang et al. 2019) and pretrained students -------------------------

@pytest.fixture(scope="module")
def vocabulary():
    from tasks.models import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    continuation, candidates = augment.whole_words(tokenizer)
    return tokenizer, continuation, candidates


def word_strings(tokenizer, ids) -> list[str]:
    return tokenizer.decode(ids[1:-1]).split()


def test_perturbations_act_on_whole_words_inside_cls_and_sep(vocabulary):
    tokenizer, continuation, candidates = vocabulary
    ids = np.array(tokenizer("i feel unbelievably happy and a little scared")["input_ids"])
    words = augment.words_of(ids, continuation)
    assert len(words) == 8 and any(len(w) > 1 for w in words)  # "unbelievably" is several pieces
    rng = np.random.default_rng(0)
    mask_id = tokenizer.mask_token_id

    masked = augment.perturb(ids, augment.AugmentParams(copies=1, mask_probability=1, ngram_probability=0), continuation, {}, mask_id, rng)
    assert masked.tolist() == [ids[0]] + [mask_id] * 8 + [ids[-1]]  # one [MASK] per word, however many pieces

    neighbours = {int(w[0]): np.array([tokenizer.convert_tokens_to_ids("glad")]) for w in words if len(w) == 1}
    replaced = augment.perturb(ids, augment.AugmentParams(copies=1, mask_probability=0, neighbour_probability=1, ngram_probability=0),
                               continuation, neighbours, mask_id, rng)
    out = word_strings(tokenizer, replaced)
    assert out == ["glad", "glad", "unbelievably", "glad", "glad", "glad", "glad", "glad"]  # multi-piece words stay

    original = word_strings(tokenizer, ids)
    for _ in range(20):
        window = augment.perturb(ids, augment.AugmentParams(copies=1, mask_probability=0, ngram_probability=1, max_ngram=3),
                                 continuation, {}, mask_id, rng)
        kept = word_strings(tokenizer, window)
        assert 1 <= len(kept) <= 3 and window[0] == ids[0] and window[-1] == ids[-1]
        assert any(original[i:i + len(kept)] == kept for i in range(len(original)))  # a contiguous window


def test_vocabulary_neighbours_are_whole_words_near_in_embedding_space(vocabulary):
    tokenizer, continuation, candidates = vocabulary
    embeddings = load_classifier("minilm", EMOTION_LABELS).get_input_embeddings().weight
    happy, movie = tokenizer.convert_tokens_to_ids(["happy", "movie"])
    found = augment.nearest_words(embeddings, np.array([happy, movie]), candidates, 10)
    assert set(found) == {happy, movie} and all(len(v) == 10 for v in found.values())
    assert happy not in found[happy] and not any(continuation[found[happy]])
    assert {"glad", "pleased"} <= set(tokenizer.convert_ids_to_tokens(found[happy].tolist()))
    assert "film" in tokenizer.convert_ids_to_tokens(found[movie].tolist())


def test_augmented_variants_are_new_and_labelled_by_the_teacher(pipeline):
    from tasks.training import predict_logits

    store, refs = pipeline
    made = run_stage(augment.STAGE, augment.AugmentParams(copies=3, seed=1), {"tokens": refs["tokens"], "teacher": refs["teacher"]}, store)
    variants, logits = augment.read_augmented(store.open(made))
    train_ids, train_labels = read_tokens(store.open(refs["tokens"]), "train")
    metrics = store.manifest(made)["metrics"]
    assert metrics["tried"] == 1200 and 600 < metrics["rows"] == len(variants) == len(logits) <= 1200
    assert metrics["rows"] + metrics["duplicates_dropped"] == 1200
    keys = [tuple(v.tolist()) for v in variants]
    assert len(set(keys)) == len(keys) and not set(keys) & {tuple(s.tolist()) for s in train_ids}
    assert all(v[0] == 101 and v[-1] == 102 and len(v) <= 32 for v in variants)
    teacher_model = load_trained(store.open(refs["teacher"]) / "model")
    np.testing.assert_allclose(logits[:50], predict_logits(teacher_model, variants[:50]), atol=1e-4)


def test_no_copies_writes_an_empty_set_without_loading_the_teacher(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    inputs = {"tokens": tmp_path / "no-tokens", "teacher": tmp_path / "no-teacher"}  # would fail if read
    assert augment.build_augmented(augment.AugmentParams(), inputs, out, Progress(bar=False)) == {"rows": 0}
    assert augment.read_augmented(out)[0] == []


def test_distillation_trains_on_the_augmented_examples(pipeline):
    store, refs = pipeline
    made = run_stage(augment.STAGE, augment.AugmentParams(copies=1, seed=2), {"tokens": refs["tokens"], "teacher": refs["teacher"]}, store)
    rows = store.manifest(made)["metrics"]["rows"]
    student = run_stage(distil.STAGE, distil.StudentParams(epochs=1, learning_rate=2e-3, batch_size=16),
                        {**student_inputs(refs), "augmented": made}, store)
    metrics = store.manifest(student)["metrics"]
    assert metrics["augmented_examples"] == rows > 0
    assert metrics["steps"] >= (400 + rows) / 16 > 400 / 16 + 10  # batches of at most 16 over both sets


def test_a_pretrained_student_of_another_shape_is_distilled(pipeline, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from tasks.training import predict_logits

    store, refs = pipeline
    config = load_config("tiny", num_labels=6)
    config.hidden_size, config.num_hidden_layers, config.intermediate_size = 32, 1, 64
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "small-bert")
    student = run_stage(distil.STAGE, distil.StudentParams(model=str(tmp_path / "small-bert"), epochs=2, learning_rate=3e-3, batch_size=16),
                        student_inputs(refs), store)
    trained = load_trained(store.open(student) / "model")
    assert (trained.config.hidden_size, trained.config.num_hidden_layers) == (32, 1)
    assert trained.config.id2label[0] == "sadness"
    ids, _ = read_tokens(store.open(refs["tokens"]), "validation")
    target = predict_logits(load_trained(store.open(refs["teacher"]) / "model"), ids)
    gap = lambda model: float(((predict_logits(model, ids) - target) ** 2).mean())  # noqa: E731
    assert gap(trained) < 0.7 * gap(load_trained(tmp_path / "small-bert"))


def test_pretrained_students_are_checked_before_training(tmp_path):
    teacher_config = load_config("tiny")
    with pytest.raises(DistilleryError) as offline:
        distil.check_student(distil.StudentParams(model="google/bert_uncased_L-4_H-256_A-4"), teacher_config)
    assert "Hub did not provide it" in str(offline.value) and "'minilm'" in str(offline.value)
    other = load_config("tiny")
    other.vocab_size = 1000
    other.save_pretrained(tmp_path / "other-vocab")
    with pytest.raises(DistilleryError, match="vocabulary of 1000 tokens, the teacher 30522"):
        distil.check_student(distil.StudentParams(model=str(tmp_path / "other-vocab")), teacher_config)
    with pytest.raises(ValueError, match="not both"):
        distil.StudentParams(model="x", layers=[0])
    with pytest.raises(ValueError, match="hidden_weight 0"):
        distil.StudentParams(model="x", hidden_weight=1.0)


def test_qat_student_exports_as_int8_qdq_onnx_that_agrees_with_pytorch(pipeline, tmp_path):
    import onnxruntime as ort

    from tasks import qat

    store, refs = pipeline
    made = run_stage(qat.STAGE, qat.QATParams(epochs=1, learning_rate=1e-3, batch_size=16, parity_examples=100),
                     {"tokens": refs["tokens"], "student": refs["student"]}, store)
    folder, metrics = store.open(made), store.manifest(made)["metrics"]
    # Integer kernels round where PyTorch's float fake quantization does not: logits move
    # by a few quantization steps, predictions do not.
    assert metrics["parity_agreement"] >= 0.98 and metrics["parity_max_abs_diff"] < 0.2
    graph = onnx.load(str(folder / "model.onnx")).graph
    int8_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert metrics["dequantize_linear_nodes"] > 10 and len(int8_weights) >= 8  # every Linear's weight is stored as INT8
    fp32_onnx = store.open(refs["onnx"]) / "model.onnx"
    assert (folder / "model.onnx").stat().st_size < 0.5 * fp32_onnx.stat().st_size

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    fused = {node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert fused & {"MatMulIntegerToFloat", "QGemm", "QLinearMatMul", "MatMulInteger"}  # integer kernels run

    ids, labels = read_tokens(store.open(refs["tokens"]), "test")
    session = onnx_session(folder / "model.onnx")
    predicted = np.concatenate([onnx_logits(session, *(t.numpy() for t in pad(ids, [i]))) for i in range(len(ids))]).argmax(1)
    student = predictions(evaluate.torch_predictor(store.open(refs["student"]))[0], ids)
    assert (predicted == student).mean() > 0.6  # fine-tuned from the student, not from scratch
