"""Layer-to-layer distillation: which tokens align, the three layer losses, the layer map,
refusals before any work, and the stage on a teacher whose ids are the student's shifted."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from artifacts.stage import run_stage
from artifacts.store import ArtifactStore
from conftest import EMOTION_LABELS, tree_state, write_emotion_slice
from tasks.stages import augment, distil, fetch, soft_labels, teacher, tokenize
from tasks.models.alignment import aligned_rows, piece_names, student_to_teacher_ids, vocabulary_alignment
from tasks.data.batching import pad
from tasks.data.encoding import encoder_for
from tasks.errors import DistilleryError
from tasks.training.layer_losses import (attention_loss, check_layer_map, embedding_loss, hidden_loss, uniform_layer_map)
from tasks.models.loading import load_classifier, load_tokenizer
from tasks.data.sources import DataParams

TEXTS = ["i feel so happy today", "im not sure what to think about the unbelievably complicated paperwork",
         "he was furious", "a tweet with a hashtag rendezvous and a typo wondefrul"]


def test_same_tokenizer_aligns_every_row_with_the_same_ids():
    minilm = load_tokenizer("minilm")
    report = vocabulary_alignment(minilm, minilm)
    assert report["aligned"] and report["same_ids"] and report["shared_share"] == 1.0
    ids = encoder_for("minilm", 64).encode(TEXTS)
    mapping = student_to_teacher_ids(piece_names(minilm), piece_names(minilm))
    assert aligned_rows(ids, ids, mapping).all()


def test_mpnet_ids_are_minilm_pieces_shifted_and_align_row_by_row(emotion_dir):
    mpnet, minilm = load_tokenizer("mpnet"), load_tokenizer("minilm")
    report = vocabulary_alignment(mpnet, minilm)
    assert report["aligned"] and not report["same_ids"]
    mapping = student_to_teacher_ids(piece_names(mpnet), piece_names(minilm))
    assert mapping[minilm.convert_tokens_to_ids("happy")] == minilm.convert_tokens_to_ids("happy") + 4
    assert mapping[minilm.cls_token_id] == mpnet.cls_token_id == 0  # [CLS] meets <s> by role
    texts = [line.split(";")[0] for line in (emotion_dir / "train.txt").read_text().splitlines()[1:301]]
    student, teacher_ids = encoder_for("minilm", 64).encode(texts), encoder_for("mpnet", 64).encode(texts)
    assert aligned_rows(teacher_ids, student, mapping).mean() > 0.99
    shifted = [row.copy() for row in teacher_ids]
    shifted[0][1] += 1  # one piece differs: that row, and only it, no longer aligns
    assert list(np.flatnonzero(~aligned_rows(shifted, student, mapping))) == [0]


def test_a_tokenizer_of_its_own_does_not_align():
    own, minilm = load_tokenizer("tiny-mpnet"), load_tokenizer("minilm")
    report = vocabulary_alignment(own, minilm)
    assert not report["aligned"] and report["shared_share"] < 0.5
    mapping = student_to_teacher_ids(piece_names(own), piece_names(minilm))
    rows = aligned_rows(encoder_for("tiny-mpnet", 64).encode(TEXTS), encoder_for("minilm", 64).encode(TEXTS), mapping)
    assert not rows.all()


def outputs(model, ids, mask):
    model.set_attn_implementation("eager")
    model.eval()  # no dropout: the same weights give the same states
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)


@pytest.fixture(scope="module")
def tiny_pair():
    teacher_model = load_classifier("tiny", EMOTION_LABELS, seed=1)
    ids, mask = pad(encoder_for("minilm", 64).encode(TEXTS), np.arange(len(TEXTS)), 0)
    return teacher_model, ids, mask


def test_a_student_identical_to_its_teacher_has_zero_layer_losses(tiny_pair):
    teacher_model, ids, mask = tiny_pair
    same = torch.nn.Identity()
    t = outputs(teacher_model, ids, mask)
    s = outputs(copy.deepcopy(teacher_model), ids, mask)
    assert hidden_loss(s.hidden_states, t.hidden_states, [0, 1], same, mask).item() == 0
    assert embedding_loss(s.hidden_states, t.hidden_states, same, mask).item() == 0
    assert attention_loss(s.attentions, t.attentions, [0, 1], mask).item() == pytest.approx(0, abs=1e-6)
    # a crossed map, or another student, is not zero
    assert hidden_loss(s.hidden_states, t.hidden_states, [1, 0], same, mask).item() > 1e-4
    assert attention_loss(s.attentions, t.attentions, [1, 0], mask).item() > 1e-7
    other = outputs(load_classifier("tiny", EMOTION_LABELS, seed=7), ids, mask)
    assert embedding_loss(other.hidden_states, t.hidden_states, same, mask).item() > 0.01


def test_attention_loss_ignores_padded_queries(tiny_pair):
    teacher_model, ids, mask = tiny_pair
    t = outputs(teacher_model, ids, mask)
    changed = [a.clone() for a in t.attentions]
    short = int(mask[0].sum())
    for a in changed:
        a[0, :, short:, :] = 1.0 / a.shape[-1]  # rows past the first text's end: padding queries
    assert attention_loss(changed, t.attentions, [0, 1], mask).item() == pytest.approx(0, abs=1e-6)


def test_uniform_layer_map_and_its_checks():
    assert uniform_layer_map(3, 12) == [3, 7, 11]
    assert uniform_layer_map(2, 2) == [0, 1]
    assert uniform_layer_map(4, 6) == [1, 2, 4, 5]
    assert check_layer_map([3, 7, 11], 3, 12) == []
    assert "2 entries for a student of 3 layers" in check_layer_map([3, 7], 3, 12)[0]
    assert "outside the teacher's 0..11" in check_layer_map([3, 7, 12], 3, 12)[0]
    with pytest.raises(DistilleryError, match=r"--student-layer-map 3,7,11"):
        distil.layer_map_of(distil.StudentParams(init="minilm", layer_map=[0, 12, 13]), [0, 2, 4], 12)


REFUSED = {
    "layer losses across tokenizers that cut text differently": (
        ["--student-attention-weight", "1"], "they cut text differently"),
    "a layer map with the wrong number of entries": (
        ["--student-init", "teacher", "--student-hidden-weight", "1", "--student-layer-map", "0,1"],
        "2 entries for a student of 1 layers"),
    "a layer map outside the teacher": (
        ["--student-init", "teacher", "--student-hidden-weight", "1", "--student-layer-map", "5"], "outside the teacher's 0..1"),
    "a layer map with every layer loss off": (["--student-layer-map", "0"], "all of them are off"),
    "a negative step floor": (["--student-min-steps", "-5"], "greater than or equal to 0"),
    "a floor above the budget": (["--teacher-min-steps", "50", "--teacher-max-steps", "10"], "exceeds max_steps"),
    "patience without validation checks": (["--student-validations", "0", "--student-patience", "2"], "needs validation checks"),
    "patience as long as the checks": (["--student-validations", "3", "--student-patience", "3"], "must be below validations"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_layer_and_schedule_settings_are_refused_before_any_work(case, tmp_path, emotion_dir, capsys):
    from flows.cli import run_command

    flags, problem = REFUSED[case]
    store = tmp_path / "store"
    code = run_command(["--smoke", "--data", str(emotion_dir), "--store", str(store), *flags], preset="emotion")
    printed = capsys.readouterr()
    assert code == 2 and problem in printed.err + printed.out, printed
    assert tree_state(store) == {}


@pytest.fixture(scope="module")
def shifted_teacher(tmp_path_factory, emotion_dir):
    """A tiny MPNet that reads the packaged all-mpnet-base-v2 tokenizer (ids = MiniLM's + 4),
    trained, soft-labelled, with the tiny BERT student's MiniLM tokens beside its own."""
    from transformers import MPNetConfig, MPNetForSequenceClassification

    from tasks.models.loading import TINY_SHAPE, _resolve

    root = tmp_path_factory.mktemp("shifted")
    folder = root / "tiny-mpnet-shared-pieces"
    tokenizer = load_tokenizer("mpnet")
    tokenizer.save_pretrained(folder)
    config = MPNetConfig(vocab_size=len(tokenizer), pad_token_id=1, bos_token_id=0, eos_token_id=2,
                         max_position_embeddings=514, num_labels=len(EMOTION_LABELS), **TINY_SHAPE)
    torch.manual_seed(0)
    MPNetForSequenceClassification(config).save_pretrained(folder)
    assert Path(_resolve(str(folder))) == folder.resolve()
    store = ArtifactStore(root / "store")
    data = write_emotion_slice(emotion_dir, root / "emotion", {"train": 300, "val": 60, "test": 60})
    refs = {"dataset": run_stage(fetch.STAGE, DataParams(source=str(data), label_names=EMOTION_LABELS), {}, store)}
    refs["teacher_tokens"] = run_stage(tokenize.STAGE, tokenize.TokenizeParams(tokenizer=str(folder), max_length=32),
                                       {"dataset": refs["dataset"]}, store)
    refs["tokens"] = run_stage(tokenize.STAGE, tokenize.TokenizeParams(tokenizer="minilm", max_length=32),
                               {"dataset": refs["dataset"]}, store)
    refs["teacher"] = run_stage(teacher.STAGE, teacher.TeacherParams(model=str(folder), epochs=3, learning_rate=3e-3,
                                                                     batch_size=16, precision="fp32"),
                                {"tokens": refs["teacher_tokens"]}, store)
    refs["augmented"] = run_stage(augment.STAGE, augment.AugmentParams(copies=1), {"dataset": refs["dataset"]}, store)
    refs["soft_labels"] = run_stage(soft_labels.STAGE, soft_labels.SoftLabelParams(precision="fp32"),
                                    {"tokens": refs["teacher_tokens"], "teacher": refs["teacher"],
                                     "augmented": refs["augmented"]}, store)
    return store, refs


def student_params(**changed) -> distil.StudentParams:
    return distil.StudentParams(**{"init": "tiny", "epochs": 2, "learning_rate": 2e-3, "batch_size": 16,
                                   "precision": "fp32", "device": "cpu", **changed})


def test_layer_losses_train_a_student_on_another_tokenizer_whose_pieces_align(shifted_teacher, monkeypatch):
    store, refs = shifted_teacher
    inputs = {name: refs[name] for name in ("tokens", "soft_labels", "augmented", "teacher", "teacher_tokens")}
    forward_rows = []
    real = distil.load_trained

    def counting(folder):
        model = real(folder)
        original = model.forward
        model.forward = lambda *a, **k: forward_rows.append(len(k["input_ids"])) or original(*a, **k)
        return model

    monkeypatch.setattr(distil, "load_trained", counting)
    plain = run_stage(distil.STAGE, student_params(), inputs, store)
    assert forward_rows == []  # logits alone never load the teacher
    layered = run_stage(distil.STAGE, student_params(hidden_weight=1.0, attention_weight=1.0, embedding_weight=1.0),
                        inputs, store)
    alignment = store.manifest(layered)["metrics"]["alignment"]
    assert alignment["rows"] == 300 + store.manifest(refs["augmented"])["metrics"]["rows"]
    assert alignment["aligned_share"] > 0.95 and alignment["layer_map"] == [1]  # one student layer: the last teacher layer
    assert sum(forward_rows) >= alignment["aligned_rows"] * 2  # the teacher read the aligned rows of every epoch
    saved = store.open(layered) / "model"
    assert not any("hidden_map" in line for line in (saved / "config.json").read_text().splitlines())
    from safetensors import safe_open

    with safe_open(str(saved / "model.safetensors"), "pt") as weights:
        assert not [k for k in weights.keys() if "map" in k]  # the width maps are not part of the student
    assert store.manifest(plain)["metrics"]["parameters"] == store.manifest(layered)["metrics"]["parameters"]


def test_two_phases_run_the_layer_losses_first_then_the_logits(shifted_teacher, monkeypatch):
    store, refs = shifted_teacher
    inputs = {name: refs[name] for name in ("tokens", "soft_labels", "augmented", "teacher", "teacher_tokens")}
    seen = []
    original = distil.distillation_loss
    monkeypatch.setattr(distil, "distillation_loss", lambda *a, **k: seen.append("logits") or original(*a, **k))
    made = run_stage(distil.STAGE, student_params(hidden_weight=1.0, layer_phase=0.5), inputs, store)
    steps = store.manifest(made)["metrics"]["steps"]
    assert len(seen) == steps - steps // 2  # the first half trains on the layers alone


def test_a_student_whose_rows_do_not_align_is_refused_in_the_stage(shifted_teacher):
    store, refs = shifted_teacher
    # Student tokens cut at 12 pieces, the teacher's at 32: a longer tweet no longer lines up.
    short = run_stage(tokenize.STAGE, tokenize.TokenizeParams(tokenizer="minilm", max_length=12), {"dataset": refs["dataset"]}, store)
    inputs = {**{name: refs[name] for name in ("soft_labels", "augmented", "teacher", "teacher_tokens")}, "tokens": short}
    before = tree_state(Path(store.path) / "objects")
    with pytest.raises(DistilleryError, match="tokenize into the teacher's pieces"):
        run_stage(distil.STAGE, student_params(hidden_weight=1.0), inputs, store)
    assert tree_state(Path(store.path) / "objects") == before


def test_class_balance_weights_rare_classes_up_and_keeps_the_mean_row_weight():
    labels = np.array([0] * 90 + [1] * 10)
    flat = distil.class_weights(labels, 2, 0.0)
    assert torch.allclose(flat, torch.ones(2))
    full = distil.class_weights(labels, 2, 1.0)
    assert full[1] / full[0] == pytest.approx(9.0) and full[labels].mean().item() == pytest.approx(1.0)
    half = distil.class_weights(labels, 2, 0.5)
    assert half[1] / half[0] == pytest.approx(3.0)
    rows = torch.tensor([1.0, 1.0])
    loss = distil.distillation_loss(distil.StudentParams(), torch.zeros(2, 2), torch.tensor([[1.0, 1.0], [3.0, 3.0]]),
                                    torch.tensor([0, 1]), rows * torch.tensor([0.0, 2.0]))
    assert loss.item() == pytest.approx(9.0)  # only the second row counts, twice
