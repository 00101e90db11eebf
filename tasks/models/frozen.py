"""A classifier trained above frozen lower layers, from their outputs computed once.

The embeddings and the lowest `frozen` encoder layers of a pretrained model are left as
they are; their outputs for every training and validation text are computed once
(`lower_hidden_states`, stage `teacher_features`) and the upper layers and the head train
on those (`upper_only`), so a step runs neither the forward nor the backward pass of the
frozen part. The model saved afterwards is the whole model: its lower layers are the
unchanged pretrained ones, so whatever reads it (soft labels, evaluate, export) runs it
from token ids as usual.

What differs from training the whole model, on purpose:
- no dropout in the frozen part: its outputs are computed once, in eval mode, so the
  embeddings' and the lower layers' dropout never act (the upper layers keep theirs);
- MPNet's relative position bias (`encoder.relative_attention_bias`, one table shared by
  every layer, turned into a bias by `compute_position_bias` once per forward pass) is
  frozen too: the cached lower layers were computed with it, and the saved model runs
  them with whatever table it holds, so training it would make the saved model differ
  from the one trained.

BERT and MPNet encoders both work (`base_model.embeddings`, `base_model.encoder.layer`).
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator

import torch

from tasks.errors import DistilleryError


class _Given(torch.nn.Module):
    """Stands in for the embeddings: the cached hidden states arrive as `inputs_embeds`."""

    def forward(self, input_ids=None, inputs_embeds=None, **kwargs):
        return inputs_embeds


class _Done(torch.nn.Module):
    """Stands in for a frozen layer whose output is already in the cached hidden states."""

    def __init__(self, returns_tuple: bool):
        super().__init__()
        self.returns_tuple = returns_tuple  # MPNet's layers return (hidden,), BERT's the tensor

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,) if self.returns_tuple else hidden_states


def check_frozen(model, frozen: int) -> None:
    depth = model.config.num_hidden_layers
    if not 0 < frozen < depth:
        raise DistilleryError(f"--teacher-frozen-layers {frozen}: the teacher has {depth} layers, so freeze 1 to "
                              f"{depth - 1} of them (at least one must learn), or 0 to train them all")


def frozen_parameters(model, frozen: int) -> dict[str, torch.Tensor]:
    """The weights the cached hidden states were computed with: embeddings, the lowest
    `frozen` layers and (MPNet) the shared relative position bias, by state-dict name."""
    base, prefix = model.base_model, model.base_model_prefix + "."
    names = ["embeddings."] + [f"encoder.layer.{i}." for i in range(frozen)] + ["encoder.relative_attention_bias."]
    return {prefix + name: value for name, value in base.state_dict().items() if name.startswith(tuple(names))}


def frozen_digest(model, frozen: int) -> str:
    """sha256 of the frozen weights (names, shapes, bytes): ties cached features to the model they came from."""
    digest = hashlib.sha256()
    for name, value in sorted(frozen_parameters(model, frozen).items()):
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}\n".encode())
        digest.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _layers(model, layers) -> Iterator[None]:
    encoder = model.base_model.encoder
    kept = encoder.layer
    encoder.layer = torch.nn.ModuleList(layers)
    try:
        yield
    finally:
        encoder.layer = kept


def lower_hidden_states(model, input_ids: torch.Tensor, mask: torch.Tensor, frozen: int) -> torch.Tensor:
    """The hidden states after the embeddings and the lowest `frozen` layers (batch, length, hidden).

    The model's own forward pass, cut after layer `frozen`: position ids from the token
    ids, the attention mask and MPNet's position bias are made exactly as in the full model."""
    with _layers(model, list(model.base_model.encoder.layer[:frozen])):
        return model.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state


@contextlib.contextmanager
def upper_only(model, frozen: int) -> Iterator[torch.nn.Module]:
    """The model, while inside, as its upper layers and head only: call it with the cached
    hidden states as `inputs_embeds` (and the attention mask); only those layers' weights
    are parameters of it then, so an optimizer made inside trains nothing else. The
    embeddings and the lower layers are put back on leaving, unchanged."""
    check_frozen(model, frozen)
    base = model.base_model
    embeddings, bias = base.embeddings, getattr(base.encoder, "relative_attention_bias", None)
    returns_tuple = model.config.model_type == "mpnet"
    upper = list(base.encoder.layer[frozen:])
    bias_learns = bias is not None and bias.weight.requires_grad
    base.embeddings = _Given()
    if bias is not None:
        bias.requires_grad_(False)  # shared with the frozen layers (module docstring)
    try:
        with _layers(model, [_Done(returns_tuple) for _ in range(frozen)] + upper):
            yield model
    finally:
        base.embeddings = embeddings
        if bias is not None:
            bias.requires_grad_(bias_learns)  # as it was
