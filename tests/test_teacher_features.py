"""A teacher trained above frozen lower layers from cached features (issue 37): the upper layers
run from the cache give the whole model's logits, only they learn, the saved model is whole, the
features stage is keyed by what it computes, and with no frozen layers nothing changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from artifacts.stage import Progress, run_stage
from artifacts.store import ArtifactStore
from conftest import EMOTION_LABELS, write_emotion_slice
from flows.dag import run_dag
from flows.presets import build_config, emotion
from tasks.data.sources import DataParams
from tasks.errors import DistilleryError
from tasks.formats import open_features, open_tokens
from tasks.models.frozen import frozen_digest, lower_hidden_states, upper_only
from tasks.models.loading import load_classifier, load_trained
from tasks.stages import fetch, teacher, teacher_features, tokenize
from tasks.training.cached import cached_batch, cached_logits
from tasks.training.device import autocast
from tasks.training.loop import predict_logits

QUIET = Progress(lambda message: None, bar=False)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread for these tests, put back after: set at import, it held for every test of the
    suite (pytest imports all modules first), and the in-process bench run trained on one thread
    against the flow's two, so their artifacts differed (tests/test_bench.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(kind: str = "mpnet", layers: int = 4):
    """A tiny classifier from a config, weights large enough that logits differ by more than rounding."""
    from transformers import BertConfig, BertForSequenceClassification, MPNetConfig, MPNetForSequenceClassification

    torch.manual_seed(0)
    shape = dict(vocab_size=300, hidden_size=64, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=128,
                 num_labels=3, initializer_range=0.2)
    if kind == "mpnet":
        return MPNetForSequenceClassification(MPNetConfig(pad_token_id=1, **shape)).eval()
    return BertForSequenceClassification(BertConfig(pad_token_id=0, **shape)).eval()


def batch_of(lengths, pad_id):
    ids = torch.full((len(lengths), max(lengths)), pad_id)
    mask = torch.zeros_like(ids)
    generator = torch.Generator().manual_seed(1)
    for i, length in enumerate(lengths):
        ids[i, :length] = torch.randint(5, 300, (length,), generator=generator)
        mask[i, :length] = 1
    return ids, mask


def cache_of(hidden, lengths):
    """What the features stage stores: each row's real positions, float16, row after row."""
    rows = [hidden[i, :n].float().numpy().astype(np.float16) for i, n in enumerate(lengths)]
    return np.concatenate(rows), np.concatenate([[0], np.cumsum(lengths)])


@pytest.mark.parametrize("kind,precision,tolerance", [("mpnet", "fp32", 2e-3), ("mpnet", "bf16", 5e-2), ("bert", "fp32", 2e-3)])
def test_upper_layers_from_cached_features_give_the_whole_models_logits(kind, precision, tolerance):
    model = tiny(kind)
    pad_id = model.config.pad_token_id
    lengths = [5, 17, 3, 12, 9]
    ids, mask = batch_of(lengths, pad_id)
    with torch.inference_mode(), autocast(precision, "cpu"):
        whole = model(input_ids=ids, attention_mask=mask).logits.float()
        # The cache is made from another padding (rows alone) than the batch it is read into.
        alone = [lower_hidden_states(model, ids[i:i + 1, :n], mask[i:i + 1, :n], 2)[0] for i, n in enumerate(lengths)]
    features = (np.concatenate([a.float().numpy().astype(np.float16) for a in alone]), np.concatenate([[0], np.cumsum(lengths)]))
    with torch.inference_mode(), autocast(precision, "cpu"), upper_only(model, 2) as upper:
        cached = upper(inputs_embeds=cached_batch(features, range(len(lengths)), ids.shape[1]), attention_mask=mask).logits.float()
    scale = whole.abs().max().item()
    assert scale > 0.1  # logits that differ across rows, not rounding noise
    assert (cached - whole).abs().max().item() <= tolerance * scale
    assert torch.equal(cached.argmax(1), whole.argmax(1))


def test_only_the_upper_layers_and_head_are_parameters_inside_and_the_model_is_whole_after():
    model = tiny()
    names = {name for name, _ in model.named_parameters()}
    with upper_only(model, 3) as upper:
        inside = {name for name, p in upper.named_parameters() if p.requires_grad}
    assert inside and all(name.startswith(("mpnet.encoder.layer.3.", "classifier.")) for name in inside), sorted(inside)
    assert {name for name, _ in model.named_parameters()} == names  # embeddings and lower layers back
    assert model.mpnet.encoder.relative_attention_bias.weight.requires_grad
    model.mpnet.encoder.relative_attention_bias.requires_grad_(False)  # frozen by its owner: it stays so
    with upper_only(model, 3):
        pass
    assert not model.mpnet.encoder.relative_attention_bias.weight.requires_grad
    with pytest.raises(DistilleryError, match="freeze 1 to 3"):
        with upper_only(model, 4):
            pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory, emotion_dir):
    """Real stages on 240 training tweets: tiny-mpnet tokens, its cached features (1 of 2 layers), the teacher above them."""
    root = tmp_path_factory.mktemp("features")
    store = ArtifactStore(root / "store")
    folder = write_emotion_slice(emotion_dir, root / "emotion", {"train": 240, "val": 60, "test": 10})
    dataset = run_stage(fetch.STAGE, DataParams(source=str(folder), label_names=EMOTION_LABELS), {}, store, QUIET)
    tokens = run_stage(tokenize.STAGE, tokenize.TokenizeParams(tokenizer="tiny-mpnet", max_length=32), {"dataset": dataset},
                       store, QUIET)
    features_params = teacher_features.TeacherFeatureParams(model="tiny-mpnet", frozen_layers=1, seed=3)
    features = run_stage(teacher_features.STAGE, features_params, {"tokens": tokens}, store, QUIET)
    params = teacher.TeacherParams(model="tiny-mpnet", frozen_layers=1, seed=3, epochs=2, learning_rate=3e-3, batch_size=16,
                                   validations=2, precision="fp32", device="cpu")
    model = run_stage(teacher.STAGE, params, {"tokens": tokens, "features": features}, store, QUIET)
    return store, tokens, features, model, params


def test_features_stage_stores_each_rows_hidden_states_after_the_frozen_layers(trained):
    store, tokens_ref, features_ref, _, _ = trained
    tokens = open_tokens(store.open(tokens_ref))
    features = open_features(store.open(features_ref))
    ids, _ = tokens.split("validation")
    values, offsets = features.split("validation")
    assert values.dtype == np.float16 and values.shape == (sum(map(len, ids)), 64) and len(offsets) == len(ids) + 1
    pretrained = load_classifier("tiny-mpnet", EMOTION_LABELS, seed=3).eval()
    row = 7
    with torch.inference_mode():
        expected = lower_hidden_states(pretrained, torch.as_tensor(ids[row])[None], torch.ones(1, len(ids[row]), dtype=torch.long), 1)[0]
    np.testing.assert_allclose(values[offsets[row]:offsets[row + 1]].astype(np.float32), expected.numpy(), atol=2e-2, rtol=1e-2)
    assert features.meta["frozen_sha256"] == frozen_digest(pretrained, 1)


def test_the_saved_teacher_is_whole_its_lower_layers_pretrained_and_it_scores_as_it_was_trained(trained):
    store, tokens_ref, features_ref, model_ref, _ = trained
    saved = load_trained(store.open(model_ref) / "model")
    pretrained = load_classifier("tiny-mpnet", EMOTION_LABELS, seed=3)
    before, after = pretrained.state_dict(), saved.state_dict()
    frozen = [n for n in before if n.startswith(("mpnet.embeddings.", "mpnet.encoder.layer.0.", "mpnet.encoder.relative_attention_bias"))]
    learnt = [n for n in before if n.startswith(("mpnet.encoder.layer.1.", "classifier."))]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    assert learnt and all(not torch.equal(before[n], after[n]) for n in learnt if n.endswith("weight"))
    # Run from token ids, as soft_labels and evaluate run it, it gives the logits it was selected by.
    tokens = open_tokens(store.open(tokens_ref))
    ids, _ = tokens.split("validation")
    from_ids = predict_logits(saved, ids, tokens.spec.pad_id)
    with upper_only(saved, 1) as upper:
        from_cache = cached_logits(upper, open_features(store.open(features_ref)).split("validation"), ids, tokens.spec.pad_id)
    assert np.abs(from_ids - from_cache).max() <= 1e-2 * np.abs(from_ids).max()
    metrics = store.manifest(model_ref)["metrics"]
    assert metrics["frozen_layers"] == 1 and metrics["trained_parameters"] < metrics["parameters"]


def test_features_of_other_weights_or_no_features_are_refused(trained):
    store, tokens_ref, features_ref, _, params = trained
    other_seed = params.model_copy(update={"seed": 4})  # a tiny model's random lower layers differ by seed
    with pytest.raises(DistilleryError, match="computed by another model"):
        run_stage(teacher.STAGE, other_seed, {"tokens": tokens_ref, "features": features_ref}, store, QUIET)
    with pytest.raises(DistilleryError, match="needs cached teacher features"):
        run_stage(teacher.STAGE, params, {"tokens": tokens_ref}, store, QUIET)
    with pytest.raises(DistilleryError, match="takes no cached teacher features"):
        run_stage(teacher.STAGE, params.model_copy(update={"frozen_layers": 0}), {"tokens": tokens_ref, "features": features_ref},
                  store, QUIET)


LOCAL_COPY = "./a-local-copy"


def steps_of(config):
    calls = []

    def call(step, stage, params, **inputs):
        calls.append((step, params, inputs))
        return f"{step} artifact"

    run_dag(config, call)
    return {name: (params, inputs) for name, params, inputs in calls}


def test_no_frozen_layers_no_features_step_and_the_teachers_key_reads_only_its_tokens():
    steps = steps_of(build_config(emotion(), LOCAL_COPY))
    assert "cache_teacher_features" not in steps
    assert steps["fine_tune_teacher"][1] == {"tokens": "tokenize_teacher artifact"}
    material = teacher.STAGE.key_material(steps["fine_tune_teacher"][0], {"tokens": _ref("a" * 64)})
    assert list(material["upstream"]) == ["tokens"]


def test_frozen_layers_add_the_features_step_keyed_by_model_depth_precision_and_device_only():
    config = build_config(emotion(), LOCAL_COPY, overrides={"teacher": {"frozen_layers": 8}})
    steps = steps_of(config)
    assert steps["fine_tune_teacher"][1] == {"tokens": "tokenize_teacher artifact", "features": "cache_teacher_features artifact"}
    params = steps["cache_teacher_features"][0]
    assert params.model_dump() == {"model": "mpnet", "frozen_layers": 8, "precision": config.teacher.precision,
                                   "device": config.teacher.device, "seed": 0}
    # Another schedule or learning rate of the teacher reuses the same features.
    other = build_config(emotion(), LOCAL_COPY, overrides={"teacher": {"frozen_layers": 8, "learning_rate": 1e-4, "epochs": 1, "seed": 7}})
    assert other.teacher_features == params
    assert build_config(emotion(), LOCAL_COPY, overrides={"teacher": {"frozen_layers": 6}}).teacher_features != params


def _ref(digest):
    from artifacts.store import ArtifactRef

    return ArtifactRef(kind="tokens", digest=digest)


def test_an_optional_input_may_be_left_out_but_no_required_or_unknown_one():
    params = teacher.TeacherParams()
    teacher.STAGE.check_inputs(params, {"tokens": _ref("a" * 64)})
    teacher.STAGE.check_inputs(params, {"tokens": _ref("a" * 64), "features": _ref("b" * 64)})
    for inputs in ({"features": _ref("b" * 64)}, {"tokens": _ref("a" * 64), "augmented": _ref("c" * 64)}):
        with pytest.raises(TypeError, match=r"reads \['features', 'tokens'\] \(\['features'\] optional\)"):
            teacher.STAGE.check_inputs(params, inputs)
