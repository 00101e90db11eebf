"""Each stage as a plain function (no Prefect), on a slice of real emotion data with tiny models."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from artifacts.stage import Progress, run_stage
from artifacts.store import ArtifactStore
from conftest import DATA_ROOT, EMOTION_LABELS, sst2_phrases, write_emotion_slice
from tasks.stages import augment, distil, evaluate, export, fetch, quantize, soft_labels, teacher, tokenize
from tasks.data.batching import length_grouped_batches, pad, random_batches
from tasks.errors import DistilleryError
from tasks.formats import open_tokens, read_soft_labels
from tasks.measure.metrics import classification_report, interleaved_latency_ms, predictions
from tasks.models.loading import load_classifier, load_config, load_trained, shrink
from tasks.onnx.session import onnx_logits, onnx_session
from tasks.data.phrases import constituents, full_sentences
from tasks.measure.predictors import onnx_predictor, torch_predictor
from tasks.data.sources import DataParams, load_splits
from tasks.training.loop import predict_logits


def tokens_of(store, ref):
    return open_tokens(store.open(ref))


def split(store, ref, name):
    return tokens_of(store, ref).split(name)


def teacher_labels(store, refs, augmented_ref=None) -> ArtifactStore:
    return run_stage(soft_labels.STAGE, soft_labels.SoftLabelParams(),
                     {"tokens": refs["tokens"], "teacher": refs["teacher"], "augmented": augmented_ref or refs["augmented"]}, store)


def student_inputs(refs: dict, **changed) -> dict:
    return {"tokens": refs["tokens"], "soft_labels": refs["soft_labels"], "augmented": refs["augmented"],
            "teacher": refs["teacher"], "teacher_tokens": refs["tokens"], **changed}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, emotion_dir):
    """Real stages run once, in order, on 400 training tweets with a tiny teacher (one tokenizer)."""
    root = tmp_path_factory.mktemp("stages")
    store = ArtifactStore(root / "store")
    folder = write_emotion_slice(emotion_dir, root / "emotion", {"train": 400, "val": 100, "test": 100})
    refs = {"dataset": run_stage(fetch.STAGE, DataParams(source=str(folder), label_names=EMOTION_LABELS), {}, store)}
    refs["tokens"] = run_stage(tokenize.STAGE, tokenize.TokenizeParams(tokenizer="tiny", max_length=32), {"dataset": refs["dataset"]}, store)
    refs["teacher"] = run_stage(teacher.STAGE, teacher.TeacherParams(model="tiny", epochs=6, learning_rate=3e-3, batch_size=16), {"tokens": refs["tokens"]}, store)
    refs["augmented"] = run_stage(augment.STAGE, augment.AugmentParams(), {"dataset": refs["dataset"]}, store)
    refs["soft_labels"] = teacher_labels(store, refs)
    refs["student"] = run_stage(distil.STAGE, distil.StudentParams(epochs=2, learning_rate=2e-3, batch_size=16), student_inputs(refs), store)
    refs["onnx"] = run_stage(export.STAGE, export.ExportParams(), {"model": refs["student"], "tokens": refs["tokens"]}, store)
    return store, refs


def test_tokenize_truncates_and_keeps_real_lengths(pipeline):
    store, refs = pipeline
    tokens = tokens_of(store, refs["tokens"])
    ids, labels = tokens.split("train")
    lengths = [len(s) for s in ids]
    assert max(lengths) <= 32 and min(lengths) < 32  # truncated, not padded
    assert all(s[0] == 101 and s[-1] == 102 for s in ids)  # [CLS] ... [SEP]
    assert len(ids) == len(labels) == 400
    stats = store.manifest(refs["tokens"])["metrics"]
    assert 0 < stats["train"]["truncated"] <= sum(1 for n in lengths if n == 32)
    assert (tokens.tokenizer_folder / "tokenizer.json").exists()
    # The artifact describes itself: enough to encode new text the same way.
    assert (tokens.spec.tokenizer, tokens.spec.max_length, tokens.spec.pad_id) == ("tiny", 32, 0)
    assert tokens.spec.special_tokens["cls_token"] == "[CLS]" and tokens.spec.mask_token == "[MASK]"
    assert set(tokens.spec.texts_sha256) == {"train", "validation", "test"}


def test_length_grouped_batches_pad_far_less_than_random(emotion_dir):
    from tasks.models.loading import load_tokenizer

    frame, _ = load_splits(DataParams(source=str(emotion_dir), label_names=EMOTION_LABELS, max_train_rows=3000))
    ids = load_tokenizer("minilm")(frame["train"]["text"].tolist(), truncation=True, max_length=64)["input_ids"]
    ids = [np.asarray(s) for s in ids]

    def padded_share(batches):
        total = sum(pad(ids, b, 0)[1].numel() for b in batches)
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
    student = shrink(teacher_model, [1])
    assert student.config.num_hidden_layers == 1
    assert torch.equal(student.bert.encoder.layer[0].output.dense.weight, teacher_model.bert.encoder.layer[1].output.dense.weight)
    assert torch.equal(student.classifier.weight, teacher_model.classifier.weight)
    assert teacher_model.config.num_hidden_layers == 2  # the teacher is left whole


def test_distillation_moves_the_student_towards_the_teacher(pipeline):
    store, refs = pipeline
    assert store.manifest(refs["student"])["metrics"]["layers"] == [0]
    ids, _ = split(store, refs["tokens"], "train")
    teacher_model = load_trained(store.open(refs["teacher"]) / "model")
    target = predict_logits(teacher_model, ids, 0)
    ran = store.manifest(refs["soft_labels"])["metrics"]["precision"]  # bf16 where the CPU has it natively
    np.testing.assert_allclose(read_soft_labels(store.open(refs["soft_labels"])).logits,
                               predict_logits(teacher_model, ids, 0, precision=ran), atol=1e-4)
    untrained = predict_logits(shrink(teacher_model, [0]), ids, 0)
    trained = predict_logits(load_trained(store.open(refs["student"]) / "model"), ids, 0)
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
    from tasks.training.layer_losses import hidden_loss

    torch.manual_seed(0)
    same = torch.nn.Identity()
    teacher_hidden = [torch.randn(2, 5, 8) for _ in range(5)]  # embeddings + 4 layers
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    student_hidden = [teacher_hidden[0], teacher_hidden[1], teacher_hidden[3]]  # layers [0, 2]
    assert hidden_loss(student_hidden, teacher_hidden, [0, 2], same, mask).item() == 0
    padded_changed = [h.clone() for h in student_hidden]
    padded_changed[2][0, 3:] += 10  # only padding positions differ
    assert hidden_loss(padded_changed, teacher_hidden, [0, 2], same, mask).item() == 0
    assert hidden_loss(student_hidden, teacher_hidden, [1, 2], same, mask).item() > 0.5


def test_intermediate_layer_matching_pulls_student_layers_towards_the_teachers(pipeline):
    store, refs = pipeline
    ids, _ = split(store, refs["tokens"], "validation")
    input_ids, mask = pad(ids, list(range(len(ids))), 0)
    teacher_model = load_trained(store.open(refs["teacher"]) / "model")

    def hidden_gap(student_ref) -> float:
        student = load_trained(store.open(student_ref) / "model")
        with torch.no_grad():
            s = student(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
            t = teacher_model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
        from tasks.training.layer_losses import hidden_loss

        return hidden_loss(s, t, [0], torch.nn.Identity(), mask).item()

    matched = run_stage(distil.STAGE, distil.StudentParams(epochs=2, learning_rate=2e-3, batch_size=16, hidden_weight=5.0),
                        student_inputs(refs), store)
    assert store.manifest(matched)["params"]["hidden_weight"] == 5.0
    assert hidden_gap(matched) < 0.5 * hidden_gap(refs["student"])


def test_student_deeper_than_its_init_model_is_refused():
    with pytest.raises(DistilleryError, match="do not fit the teacher, which has 2 layers"):
        distil.student_layers(distil.StudentParams(layers=[0, 2]), 2)
    with pytest.raises(DistilleryError, match="do not fit student init 'minilm', which has 6 layers"):
        distil.student_layers(distil.StudentParams(init="minilm", layers=[0, 6]), 6)
    with pytest.raises(ValueError, match="distinct, ascending"):
        distil.StudentParams(layers=[2, 0])
    assert distil.student_layers(distil.StudentParams(), 6) == [0, 2, 4]
    # the teacher layers they match: the copied ones when cut from the teacher, else uniform
    assert distil.layer_map_of(distil.StudentParams(), [0, 2, 4], 6) == [0, 2, 4]
    assert distil.layer_map_of(distil.StudentParams(init="minilm"), [0, 2, 4], 12) == [3, 7, 11]


def test_onnx_export_matches_pytorch_at_any_batch_and_length(pipeline):
    store, refs = pipeline
    model = load_trained(store.open(refs["student"]) / "model")
    session = onnx_session(store.open(refs["onnx"]) / "model.onnx")
    ids, _ = split(store, refs["tokens"], "test")
    for batch in ([0], [1, 2, 3], list(range(40))):
        input_ids, mask = pad(ids, batch, 0)
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
    ids, _ = split(store, refs["tokens"], "test")
    input_ids, mask = (t.numpy() for t in pad(ids, range(24), 0))
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

    def strict(sequences, labels, pad_id):
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


def test_classification_report_against_hand_computed_values():
    result = classification_report([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], num_labels=3)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["confusion_matrix"] == [[1, 0, 1], [1, 1, 0], [0, 0, 2]]
    # class 0: p=1/2 r=1/2; class 1: p=1 r=1/2; class 2: p=2/3 r=1
    assert result["per_class_f1"] == pytest.approx([0.5, 2 / 3, 0.8])
    assert result["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    assert classification_report([1, 1], [0, 0], num_labels=2)["per_class_f1"] == [0.0, 0.0]  # no division by zero


def test_evaluate_reports_quality_speed_and_size_for_three_models(pipeline):
    store, refs = pipeline
    int8 = run_stage(quantize.STAGE, quantize.QuantizeParams(), {"onnx": refs["onnx"], "tokens": refs["tokens"]}, store)
    report = run_stage(evaluate.STAGE, evaluate.EvaluateParams(latency_sentences=20, warmup=2, rounds=2),
                       {"teacher_tokens": refs["tokens"], "teacher": refs["teacher"], "student_tokens": refs["tokens"],
                        "student": refs["student"], "student_int8": int8}, store)
    metrics = json.loads((store.open(report) / "metrics.json").read_text())
    assert set(metrics["models"]) == {"teacher", "student", "student_int8"}
    for m in metrics["models"].values():
        assert sum(map(sum, m["confusion_matrix"])) == 100 == metrics["test_rows"]
        assert 0 < m["latency_p50_ms"] <= m["latency_p95_ms"]
        assert len(m["latency_p50_rounds_ms"]) == 2 and min(m["latency_p50_rounds_ms"]) <= m["latency_p50_ms"]
        assert len(m["per_class_f1"]) == 6 and 0 <= m["macro_f1"] <= 1
    assert metrics["models"]["student_int8"]["size_bytes"] < metrics["models"]["student"]["size_bytes"]
    ids, labels = split(store, refs["tokens"], "test")
    student = predictions(torch_predictor(store.open(refs["student"]))[0], ids, 0)
    assert metrics["models"]["student"]["accuracy"] == pytest.approx(float((student == labels).mean()))


def test_unknown_models_fail_with_the_offline_fix(tmp_path):
    with pytest.raises(DistilleryError, match="does not exist"):
        load_config(str(tmp_path / "no-such-checkpoint"))
    with pytest.raises(DistilleryError) as error:
        load_config("no-such-org/no-such-model")
    assert "Hub" in str(error.value) and "'minilm'" in str(error.value)
    assert load_config("minilm").num_hidden_layers == 6


# --- augmentation on text (Tang et al. 2019) -------------------------------------------

@pytest.fixture(scope="module")
def word_table():
    return augment.word_table()


def test_perturbations_act_on_whole_words():
    words = "i feel unbelievably happy and a little scared".split()
    rng = np.random.default_rng(0)
    masked = augment.perturb(words, augment.AugmentParams(copies=1, mask_probability=1, ngram_probability=0), {}, rng)
    assert masked == ["[MASK]"] * 8  # one mask per word, however many pieces a tokenizer makes of it

    neighbours = {w: ["glad"] for w in words if w != "unbelievably"}
    replaced = augment.perturb(words, augment.AugmentParams(copies=1, mask_probability=0, neighbour_probability=1, ngram_probability=0),
                               neighbours, rng)
    assert replaced == ["glad", "glad", "unbelievably", "glad", "glad", "glad", "glad", "glad"]  # words without neighbours stay

    for _ in range(20):
        kept = augment.perturb(words, augment.AugmentParams(copies=1, mask_probability=0, ngram_probability=1, max_ngram=3), {}, rng)
        assert 1 <= len(kept) <= 3
        assert any(words[i:i + len(kept)] == kept for i in range(len(words)))  # a contiguous window


def test_neighbours_are_whole_words_near_in_a_teacher_independent_table(word_table):
    words, table = word_table
    assert len(words) > 15000 and all(w.isalpha() for w in words[:1000])
    np.testing.assert_allclose(np.linalg.norm(table[:50], axis=1), 1, atol=1e-5)
    found = augment.nearest_words(words, table, ["happy", "movie", "zzzqx"], 10)
    assert set(found) == {"happy", "movie"} and all(len(v) == 10 for v in found.values())  # unknown words get none
    assert "happy" not in found["happy"] and {"glad", "pleased"} <= set(found["happy"])
    assert "film" in found["movie"]


def test_augmented_variants_are_new_texts_any_tokenizer_reads(pipeline, word_table):
    from tasks.data.encoding import encoder_for
    from tasks.formats import read_augmented, read_texts

    store, refs = pipeline
    made = run_stage(augment.STAGE, augment.AugmentParams(copies=3, seed=1), {"dataset": refs["dataset"]}, store)
    variants, sources = read_augmented(store.open(made))
    train = read_texts(store.open(refs["dataset"]), "train")
    metrics = store.manifest(made)["metrics"]
    assert metrics["tried"] == 1200 and 600 < metrics["rows"] == len(variants) <= 1200
    assert metrics["rows"] + metrics["duplicates_dropped"] == 1200
    assert len(set(variants)) == len(variants) and not set(variants) & set(train)
    table_words = set(word_table[0])
    assert all(set(v.split()) - {"[MASK]"} <= set(train[s].split()) | table_words
               for v, s in zip(variants, sources))  # words of the source, masks, or table words
    masked = next(v for v in variants if "[MASK]" in v)
    bert = encoder_for("minilm", 32).encode([masked])[0]
    mpnet = encoder_for("tiny-mpnet", 32).encode([masked])[0]
    assert 103 in bert  # [MASK] for BERT ...
    assert encoder_for("tiny-mpnet", 32).tokenizer.mask_token_id in mpnet  # ... <mask> for MPNet


def test_sentence_source_perturbs_only_the_full_sentences(tmp_path):
    from tasks.formats import read_augmented, read_texts

    store = ArtifactStore(str(tmp_path / "store"))
    folder = tmp_path / "sst2"
    folder.mkdir()
    lines = (DATA_ROOT / "sst2" / "train.tsv").read_text().splitlines()[1:]
    phrases = sst2_phrases()
    sentences = [phrases[k] for k in full_sentences(phrases)[:30]]
    trees = [line for line, phrase in zip(lines, phrases) if any(phrase in sentence for sentence in sentences)]
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(trees) + "\n")
    (folder / "dev.tsv").write_text("sentence\tlabel\nit 's fine \t1\nbad movie \t0\n")
    data = DataParams(source=str(folder), splits={"train": "train", "test": "dev"}, label_names=["negative", "positive"])
    dataset = run_stage(fetch.STAGE, data, {}, store)
    params = augment.AugmentParams(copies=2, source="sentences", ngram_probability=0, seed=1)
    made = run_stage(augment.STAGE, params, {"dataset": dataset}, store)
    variants, sources = read_augmented(store.open(made))
    train = read_texts(store.open(dataset), "train")
    sentences = full_sentences(train)
    metrics = store.manifest(made)["metrics"]
    assert metrics["perturbed_texts"] == len(sentences) and metrics["tried"] == 2 * len(sentences)
    assert set(sources) <= set(sentences) and len(variants) > len(sentences) / 2  # short ones often come out unchanged
    assert all(len(v.split()) == len(train[s].split()) for v, s in zip(variants, sources))  # sentence-length, not cut
    every = run_stage(augment.STAGE, params.model_copy(update={"source": "every"}), {"dataset": dataset}, store)
    assert store.manifest(every)["metrics"]["perturbed_texts"] == len(train) > len(sentences)


def test_substitution_swaps_one_constituent_for_another_texts(tmp_path):
    from tasks.formats import read_augmented, read_texts

    store = ArtifactStore(str(tmp_path / "store"))
    folder = tmp_path / "sst2"
    folder.mkdir()
    lines = (DATA_ROOT / "sst2" / "train.tsv").read_text().splitlines()[1:]
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(lines[:3000]) + "\n")
    (folder / "dev.tsv").write_text("sentence\tlabel\nit 's fine \t1\nbad movie \t0\n")
    data = DataParams(source=str(folder), splits={"train": "train", "test": "dev"}, label_names=["negative", "positive"])
    dataset = run_stage(fetch.STAGE, data, {}, store)
    train = read_texts(store.open(dataset), "train")
    only_swaps = augment.AugmentParams(copies=2, source="sentences", substitute_probability=1, mask_probability=0,
                                       neighbour_probability=0, ngram_probability=0, seed=1)
    made = run_stage(augment.STAGE, only_swaps, {"dataset": dataset}, store)
    variants, sources = read_augmented(store.open(made))
    assert store.manifest(made)["metrics"]["texts_with_constituents"] > 100
    spans = constituents(train, full_sentences(train))
    texts = {tuple(t.split()) for t in train}

    def one_swap(old: list[str], new: list[str], source: int) -> bool:
        """new is old with one constituent replaced by another training text of about its length."""
        for a, b in spans[source]:
            middle = tuple(new[a:len(new) - (len(old) - b)])
            if (new[:a] == old[:a] and new[len(new) - (len(old) - b):] == old[b:] and middle in texts
                    and middle != tuple(old[a:b]) and abs(len(middle) - (b - a)) <= augment.Substitutions.SLACK):
                return True
        return False

    assert len(variants) > 100 and all(one_swap(train[s].split(), v.split(), s) for v, s in zip(variants, sources))
    # without substitution the same parameters give other variants: each is its sentence, unchanged, so none
    none = run_stage(augment.STAGE, only_swaps.model_copy(update={"substitute_probability": 0}), {"dataset": dataset}, store)
    assert read_augmented(store.open(none))[0] == []


def test_no_copies_writes_an_empty_set_and_reads_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    inputs = {"dataset": tmp_path / "no-dataset"}  # would fail if read
    assert augment.build_augmented(augment.AugmentParams(), inputs, out, Progress(bar=False)) == {"rows": 0}
    from tasks.formats import read_augmented

    assert read_augmented(out)[0] == []


def test_distillation_trains_on_the_augmented_examples(pipeline):
    store, refs = pipeline
    made = run_stage(augment.STAGE, augment.AugmentParams(copies=1, seed=2), {"dataset": refs["dataset"]}, store)
    rows = store.manifest(made)["metrics"]["rows"]
    labels = teacher_labels(store, refs, made)
    assert store.manifest(labels)["metrics"]["rows"] == 400 + rows
    student = run_stage(distil.STAGE, distil.StudentParams(epochs=1, learning_rate=2e-3, batch_size=16),
                        student_inputs(refs, augmented=made, soft_labels=labels), store)
    metrics = store.manifest(student)["metrics"]
    assert metrics["augmented_examples"] == rows > 0
    assert metrics["steps"] >= (400 + rows) / 16 > 400 / 16 + 10  # batches of at most 16 over both sets


def test_manifests_record_the_threads_a_stage_ran_with_outside_its_key(pipeline):
    store, refs = pipeline
    manifest = store.manifest(refs["teacher"])
    assert manifest["runtime"]["torch_threads"] == torch.get_num_threads() >= 1
    assert "torch_threads" not in json.dumps(manifest["params"]) + json.dumps(manifest["extra"])


def test_soft_labels_resume_after_a_crash_with_the_bytes_of_an_unbroken_run(pipeline, monkeypatch):
    from tasks.data.encoding import encoder_of
    from tasks.formats import read_augmented

    store, refs = pipeline
    made = run_stage(augment.STAGE, augment.AugmentParams(copies=1, seed=4), {"dataset": refs["dataset"]}, store)
    inputs = {"tokens": refs["tokens"], "teacher": refs["teacher"], "augmented": made}
    params = soft_labels.SoftLabelParams(batch_size=8, precision="fp32", device="cpu")
    monkeypatch.setattr(soft_labels, "CHUNK_BATCHES", 2)  # 16 texts a chunk: dozens of chunks
    monkeypatch.setenv("DISTILLERY_CHECKPOINT_SECONDS", "0")  # a checkpoint after every chunk

    def crash(message: str) -> None:
        if "checkpoint saved at chunk 5/" in message:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        run_stage(soft_labels.STAGE, params, inputs, store, Progress(crash, bar=False))
    said: list[str] = []
    ref = run_stage(soft_labels.STAGE, params, inputs, store, Progress(said.append, every_seconds=0, bar=False))
    assert any("resumed from the checkpoint at chunk 5/" in m for m in said)
    assert not any("soft_labels: 1/" in m for m in said)  # the first five chunks were not redone

    tokens = tokens_of(store, refs["tokens"])
    sequences = tokens.split("train")[0] + encoder_of(tokens).encode(read_augmented(store.open(made))[0])
    unbroken = predict_logits(load_trained(store.open(refs["teacher"]) / "model"), sequences, tokens.spec.pad_id, 8)
    assert np.array_equal(read_soft_labels(store.open(ref)).logits, unbroken)  # one call over all texts, bit for bit


def test_soft_labels_of_other_texts_are_never_used(pipeline):
    store, refs = pipeline
    made = run_stage(augment.STAGE, augment.AugmentParams(copies=1, seed=3), {"dataset": refs["dataset"]}, store)
    other = teacher_labels(store, refs, made)  # logits for train + these variants
    assert soft_labels.STAGE.problem_with(store, other, {"tokens": refs["tokens"], "teacher": refs["teacher"],
                                                         "augmented": refs["augmented"]})
    assert soft_labels.STAGE.problem_with(store, refs["soft_labels"], {"tokens": refs["tokens"], "teacher": refs["teacher"],
                                                                       "augmented": refs["augmented"]}) == ""
    before = store.digests()
    with pytest.raises(RuntimeError, match="soft labels do not belong to these texts"):
        run_stage(distil.STAGE, distil.StudentParams(epochs=1), student_inputs(refs, soft_labels=other), store)
    assert store.digests() == before


# --- students independent of the teacher -------------------------------------------------

def test_a_pretrained_student_of_another_shape_is_distilled(pipeline, tmp_path):
    from transformers import AutoModelForSequenceClassification

    store, refs = pipeline
    config = load_config("tiny", num_labels=6)
    config.hidden_size, config.num_hidden_layers, config.intermediate_size = 32, 2, 64
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "small-bert")
    from tasks.models.loading import load_tokenizer

    load_tokenizer("minilm").save_pretrained(tmp_path / "small-bert")
    student = run_stage(distil.STAGE, distil.StudentParams(init=str(tmp_path / "small-bert"), layers=[0, 1], epochs=2,
                                                           learning_rate=3e-3, batch_size=16),
                        student_inputs(refs), store)
    trained = load_trained(store.open(student) / "model")
    assert (trained.config.hidden_size, trained.config.num_hidden_layers) == (32, 2)
    assert trained.config.id2label[0] == "sadness"
    ids, _ = split(store, refs["tokens"], "validation")
    target = predict_logits(load_trained(store.open(refs["teacher"]) / "model"), ids, 0)
    gap = lambda model: float(((predict_logits(model, ids, 0) - target) ** 2).mean())  # noqa: E731
    assert gap(trained) < 0.7 * gap(load_trained(tmp_path / "small-bert"))


def test_student_init_cuts_the_packaged_minilm_to_its_layers(pipeline, monkeypatch):
    store, refs = pipeline
    student, layers = distil.initial_student(distil.StudentParams(init="minilm", layers=[0, 5]), EMOTION_LABELS,
                                             store.open(refs["teacher"]))
    minilm = load_classifier("minilm", EMOTION_LABELS)
    assert (layers, student.config.num_hidden_layers, student.config.hidden_size) == ([0, 5], 2, 384)
    assert torch.equal(student.bert.encoder.layer[1].output.dense.weight, minilm.bert.encoder.layer[5].output.dense.weight)


def test_logits_only_distillation_never_runs_the_teacher(pipeline, monkeypatch):
    """A student-only change costs no teacher inference: distil_student never loads the teacher."""
    import tasks.stages.distil as distil_module

    store, refs = pipeline
    teacher_folder = store.open(refs["teacher"]) / "model"
    forward_passes = []
    real = distil_module.load_trained

    def counting(folder):
        model = real(folder)
        if Path(folder) == teacher_folder:
            original = model.forward
            model.forward = lambda *a, **k: forward_passes.append(1) or original(*a, **k)
        return model

    monkeypatch.setattr(distil_module, "load_trained", counting)
    for seed in (1, 2):
        run_stage(distil.STAGE, distil.StudentParams(init="tiny", epochs=1, learning_rate=2e-3, batch_size=16, seed=seed),
                  student_inputs(refs), store)
    assert forward_passes == []
    run_stage(distil.STAGE, distil.StudentParams(epochs=1, learning_rate=2e-3, batch_size=16, hidden_weight=1.0, seed=3),
              student_inputs(refs), store)
    assert len(forward_passes) >= 400 / 16  # hidden-state matching does need it, once per batch


def test_qat_student_exports_as_int8_qdq_onnx_that_agrees_with_pytorch(pipeline, tmp_path):
    import onnxruntime as ort

    from tasks.stages import qat

    store, refs = pipeline
    made = run_stage(qat.STAGE, qat.QATParams(epochs=1, learning_rate=2e-4, batch_size=16, parity_examples=100),
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

    ids, labels = split(store, refs["tokens"], "test")
    session = onnx_session(folder / "model.onnx")
    predicted = np.concatenate([onnx_logits(session, *(t.numpy() for t in pad(ids, [i], 0))) for i in range(len(ids))]).argmax(1)
    student = predictions(torch_predictor(store.open(refs["student"]))[0], ids, 0)
    assert (predicted == student).mean() > 0.6  # fine-tuned from the student, not from scratch

    # The INT8 validation accuracy, under quantize's key, is the published ONNX model's.
    val_ids, val_labels = split(store, refs["tokens"], "validation")
    int8 = predictions(onnx_predictor(folder)[0], val_ids, 0)
    assert metrics["validation_accuracy_int8"] == round(float((int8 == val_labels).mean()), 5)


# --- a teacher of another make: tiny MPNet with its own vocabulary ------------------------

@pytest.fixture(scope="module")
def mpnet(pipeline):
    """The same data through a tiny MPNet teacher (pad id 1) and a tiny BERT student with MiniLM's vocabulary."""
    store, refs = pipeline
    made = {"dataset": refs["dataset"], "augmented": refs["augmented"], "student_tokens": refs["tokens"]}
    made["teacher_tokens"] = run_stage(tokenize.STAGE, tokenize.TokenizeParams(tokenizer="tiny-mpnet", max_length=32),
                                       {"dataset": refs["dataset"]}, store)
    made["teacher"] = run_stage(teacher.STAGE, teacher.TeacherParams(model="tiny-mpnet", epochs=6, learning_rate=3e-3, batch_size=16),
                                {"tokens": made["teacher_tokens"]}, store)
    made["soft_labels"] = run_stage(soft_labels.STAGE, soft_labels.SoftLabelParams(),
                                    {"tokens": made["teacher_tokens"], "teacher": made["teacher"], "augmented": refs["augmented"]}, store)
    made["student"] = run_stage(distil.STAGE, distil.StudentParams(init="tiny", epochs=8, learning_rate=3e-3, batch_size=16),
                                {"tokens": refs["tokens"], "soft_labels": made["soft_labels"], "augmented": refs["augmented"],
                                 "teacher": made["teacher"], "teacher_tokens": made["teacher_tokens"]}, store)
    return store, made


def test_mpnet_teacher_reads_its_own_ids_and_pads_with_its_own_pad_id(mpnet):
    store, made = mpnet
    teacher_tokens, student_tokens = tokens_of(store, made["teacher_tokens"]), tokens_of(store, made["student_tokens"])
    assert (teacher_tokens.spec.pad_id, student_tokens.spec.pad_id) == (1, 0)
    assert teacher_tokens.spec.special_tokens["mask_token"] == "<mask>" and teacher_tokens.spec.vocab_size < 10000
    t_ids, t_labels = teacher_tokens.split("train")
    s_ids, s_labels = student_tokens.split("train")
    assert np.array_equal(t_labels, s_labels) and teacher_tokens.spec.texts_sha256 == student_tokens.spec.texts_sha256
    assert any(not np.array_equal(a, b) for a, b in zip(t_ids[:20], s_ids[:20]))  # same texts, other ids
    model = load_trained(store.open(made["teacher"]) / "model")
    assert model.config.model_type == "mpnet"
    # The pad id matters for MPNet: its position ids come from where the padding is.
    ids = t_ids[:8]
    right = predict_logits(model, ids, 1)
    alone = np.concatenate([predict_logits(model, [s], 1) for s in ids])
    np.testing.assert_allclose(right, alone, atol=1e-4)


def test_a_bert_student_learns_from_an_mpnet_teacher_through_texts(mpnet, pipeline):
    store, made = mpnet
    t_ids, _ = split(store, made["teacher_tokens"], "train")
    s_ids, _ = split(store, made["student_tokens"], "train")
    target = predict_logits(load_trained(store.open(made["teacher"]) / "model"), t_ids, 1)
    student = load_trained(store.open(made["student"]) / "model")
    assert student.config.model_type == "bert" and student.config.vocab_size == 30522
    gap = lambda model: float(((predict_logits(model, s_ids, 0) - target) ** 2).mean())  # noqa: E731
    trained, untrained = gap(student), gap(shrink(load_classifier("tiny", EMOTION_LABELS, seed=42), [0]))
    print(f"\nFIGURE tiny BERT student's logit MSE to the tiny MPNet teacher on the training texts: {trained:.4f} "
          f"(untrained: {untrained:.4f})")
    assert trained < 0.5 * untrained  # the same rows, each model on its own ids


def test_mpnet_exports_to_a_plain_onnx_graph_that_matches_pytorch(mpnet):
    store, made = mpnet
    ref = run_stage(export.STAGE, export.ExportParams(), {"model": made["teacher"], "tokens": made["teacher_tokens"]}, store)
    metrics = store.manifest(ref)["metrics"]
    assert metrics["fused"] is False and metrics["parity_max_abs_diff"] < 1e-3


def test_augmentation_copies_grow_for_a_small_data_set_within_their_cap():
    scaled = augment.AugmentParams(copies=2, min_texts=48_000, max_copies=8)
    assert augment.copies_for(scaled, 16_000) == 2  # emotion's size: two variants give 48,000 texts
    assert augment.copies_for(scaled, 9_600) == 4
    assert augment.copies_for(scaled, 4_900) == 8  # would want 9: capped
    assert augment.copies_for(scaled, 60_000) == 2  # never fewer than asked
    assert augment.copies_for(augment.AugmentParams(copies=2), 100) == 2  # no floor: copies decides


def test_a_small_data_set_gets_more_variants_per_text(tmp_path, emotion_dir):
    store = ArtifactStore(tmp_path / "store")
    folder = write_emotion_slice(emotion_dir, tmp_path / "emotion", {"train": 100, "val": 20, "test": 20})
    dataset = run_stage(fetch.STAGE, DataParams(source=str(folder), label_names=EMOTION_LABELS), {}, store)
    made = run_stage(augment.STAGE, augment.AugmentParams(copies=1, min_texts=500, max_copies=8), {"dataset": dataset}, store)
    metrics = store.manifest(made)["metrics"]
    assert metrics["copies"] == 4 and metrics["tried"] == 400 and metrics["rows"] > 300


class Interrupted(Exception):
    pass


class StopAt(Progress):
    """Progress that stops the stage at a given step, as a crash would (after that step's checkpoint)."""

    def __init__(self, at: int, said: list[str]):
        super().__init__(log=said.append, bar=False)
        self.at = at

    def step(self, label: str, done: int, total: int, **stats: float) -> None:
        super().step(label, done, total, **stats)
        if done == self.at:
            raise Interrupted(label)


def test_distil_student_resumes_from_its_checkpoint_and_ends_identical(pipeline, monkeypatch):
    store, refs = pipeline
    params = distil.StudentParams(epochs=2, learning_rate=2e-3, batch_size=16)  # the fixture's: its student is the uninterrupted run
    monkeypatch.setenv("DISTILLERY_CHECKPOINT_SECONDS", "0")  # a checkpoint at every step
    said: list[str] = []
    with pytest.raises(Interrupted):
        run_stage(distil.STAGE, params, student_inputs(refs), store, StopAt(12, said))
    assert any("checkpoint saved at step 11/" in line for line in said)
    monkeypatch.setenv("DISTILLERY_CHECKPOINT_SECONDS", "3600")
    resumed_said: list[str] = []
    resumed = run_stage(distil.STAGE, params, student_inputs(refs), store, Progress(log=resumed_said.append, bar=False))
    assert any("resumed from the checkpoint at step 11/" in line for line in resumed_said), resumed_said
    assert resumed == refs["student"]  # bit-identical to the student never interrupted
