"""The training loop: the optimizer that runs, the length of the schedule, validation checks,
best-weights selection and early stopping, on a tiny BERT and a task it learns in seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from artifacts.progress import Progress
from tasks.errors import DistilleryError
from tasks.models.loading import load_classifier
from tasks.training.loop import Best, TrainParams, batch_plan, classification_loss, predict_logits, train, validation_steps

MARK = 2000  # a word piece whose presence decides the label


def toy_task(rows: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Label 1 if the sequence holds MARK: a tiny BERT learns it in a few dozen steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows)
    sequences = []
    for label in labels:
        body = rng.integers(3000, 4000, rng.integers(4, 12))
        if label:
            body[rng.integers(len(body))] = MARK
        sequences.append(np.concatenate([[101], body, [102]]).astype(np.int64))
    return sequences, labels


def quiet() -> Progress:
    return Progress(log=lambda message: None, bar=False)


def params(**changed) -> TrainParams:
    base = dict(epochs=1, batch_size=8, learning_rate=2e-3, precision="fp32", device="cpu", seed=0)
    return TrainParams(**{**base, **changed})


def test_the_fused_optimizer_is_what_steps_and_the_default_loop_on_request():
    sequences, labels = toy_task(32, 0)
    for fused, expected in ((True, "adamw-fused"), (False, "adamw-default")):
        model = load_classifier("tiny", ["a", "b"], seed=0)
        history = train(model, sequences, classification_loss(labels), params(fused_optimizer=fused), quiet(), "t", 0)
        assert history["optimizer"] == expected
        assert history["matmul_dtype"] == "float32"  # fp32: no autocast (test_precision.py checks bf16)


def test_fused_and_default_adamw_take_the_same_steps():
    sequences, labels = toy_task(32, 0)
    weights = []
    for fused in (True, False):
        model = load_classifier("tiny", ["a", "b"], seed=0)
        train(model, sequences, classification_loss(labels), params(fused_optimizer=fused), quiet(), "t", 0)
        weights.append(model.classifier.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], atol=1e-5, rtol=1e-4)


def test_epochs_decide_the_length_unless_below_the_floor_or_above_the_budget():
    lengths = [5] * 40  # 5 batches of 8 per pass
    assert len(batch_plan(lengths, params(epochs=1.5))) == 5 + 2
    assert len(batch_plan(lengths, params(epochs=1.5, min_steps=23))) == 23  # four passes and a part
    assert len(batch_plan(lengths, params(epochs=3, max_steps=7))) == 7
    first, again = batch_plan(lengths, params(min_steps=23)), batch_plan(lengths, params(min_steps=23))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # a resumed run sees the same batches
    # the floor adds whole new passes: every example is seen as often as its pass-mates
    seen = np.bincount(np.concatenate(batch_plan(lengths, params(epochs=1, min_steps=15))), minlength=40)
    assert set(seen) == {3}


def test_validation_checks_are_spread_evenly_and_end_at_the_last_step():
    assert validation_steps(100, 4) == [25, 50, 75, 100]
    assert validation_steps(3, 5) == [1, 2, 3]
    assert validation_steps(100, 0) == []


def flipping_loss(labels: np.ndarray, flip_after: int):
    """Cross-entropy on the true labels, then on the inverted ones: validation peaks mid-way."""
    right, wrong = classification_loss(labels), classification_loss(1 - labels)

    def loss(model, batch, ids, mask, step):
        return (right if step <= flip_after else wrong)(model, batch, ids, mask, step)

    return loss


def test_the_best_validation_weights_are_kept_not_the_last():
    sequences, labels = toy_task(160, 1)
    validation = toy_task(80, 2)
    model = load_classifier("tiny", ["a", "b"], seed=0)
    history = train(model, sequences, flipping_loss(labels, 40), params(epochs=4, validations=4), quiet(), "t", 0,
                    validation=validation)  # 80 steps: checks at 20, 40, 60, 80
    curve = {point["step"]: point["accuracy"] for point in history["validation_curve"]}
    assert list(curve) == [20, 40, 60, 80]
    assert curve[40] > 0.9 and curve[80] < 0.5  # learnt, then unlearnt
    assert history["best_step"] == max(curve, key=lambda step: (curve[step], -step))
    returned = (predict_logits(model, validation[0], 0).argmax(1) == validation[1]).mean()
    assert returned == pytest.approx(curve[history["best_step"]])
    assert history["validation_accuracy"] == pytest.approx(returned)


def test_patience_stops_training_after_checks_without_improvement():
    sequences, labels = toy_task(160, 1)
    validation = toy_task(80, 2)
    model = load_classifier("tiny", ["a", "b"], seed=0)
    history = train(model, sequences, flipping_loss(labels, 40), params(epochs=4, validations=8, patience=2),
                    quiet(), "t", 0, validation=validation)
    assert history["steps"] == 80 and history["steps_run"] < 80
    checks = [point["step"] for point in history["validation_curve"]]
    assert checks[-1] == history["steps_run"] and len(checks) - 1 - checks.index(history["best_step"]) == 2


def test_best_weights_survive_a_checkpoint(tmp_path):
    model = load_classifier("tiny", ["a", "b"], seed=0)
    best = Best("accuracy")
    best.offer(10, {"accuracy": 0.8, "macro_f1": 0.7}, model)
    saved = best.save(tmp_path)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    restored = Best("accuracy")
    restored.load(tmp_path, saved)
    assert restored.step == 10 and restored.scores["accuracy"] == 0.8
    assert not restored.offer(20, {"accuracy": 0.8, "macro_f1": 0.9}, model)  # a tie keeps the earlier weights
    restored.restore(model)
    torch.testing.assert_close(model.classifier.weight, best.state["classifier.weight"])


@pytest.mark.parametrize("changed,message", [
    ({"min_steps": 500, "max_steps": 100}, "min_steps 500 exceeds max_steps 100"),
    ({"patience": 3}, "patience 3 needs validation checks"),
    ({"patience": 4, "validations": 4}, "patience 4 must be below validations 4"),
    ({"min_steps": -1}, "min_steps"),
])
def test_inconsistent_schedules_are_refused(changed, message):
    with pytest.raises(ValueError, match=message):
        params(**changed)


def test_a_bad_schedule_is_refused_at_the_edge_with_flag_names():
    from flows.cli import _flag
    from flows.presets import build_config, emotion

    with pytest.raises(DistilleryError, match=r"--student-patience|student.*patience"):
        build_config(emotion(), overrides={"student": {"validations": 0, "patience": 2}}, describe=_flag)
