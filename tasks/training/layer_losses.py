"""Layer-to-layer distillation: the student matches the teacher inside, not only at its logits.

As TinyBERT and MiniLM do, over positions where both models read the same piece
(tasks/models/alignment.py):
- hidden states: the MSE between student layer i and teacher layer `layer_map[i]`,
  through one learned linear map from the student's width to the teacher's (384 -> 768
  for MiniLM against MPNet; none when the widths agree);
- attention: per head, KL(teacher || student) between the two attention distributions of
  each real query position over the keys (the models must have as many heads);
- embeddings: the MSE between the two embedding outputs, through a map of its own.
Every loss is averaged over the real (unpadded) positions of aligned rows only.

The learned maps train with the student and are dropped with the training: the model
saved is the student alone. `uniform_layer_map` is TinyBERT's default g(m) = m * N / M.
"""

from __future__ import annotations

from typing import Sequence

import torch


def uniform_layer_map(student_depth: int, teacher_depth: int) -> list[int]:
    """Student layer i (0-based) matches teacher layer ceil((i + 1) * N / M) - 1: the last matches the last."""
    return [-(-(i + 1) * teacher_depth // student_depth) - 1 for i in range(student_depth)]


def check_layer_map(layer_map: Sequence[int], student_depth: int, teacher_depth: int) -> list[str]:
    """What is wrong with a layer map, in words (empty when it fits both models)."""
    problems = []
    if len(layer_map) != student_depth:
        problems.append(f"it has {len(layer_map)} entries for a student of {student_depth} layers (one teacher layer per "
                        f"student layer)")
    outside = [t for t in layer_map if not 0 <= t < teacher_depth]
    if outside:
        problems.append(f"teacher layers {outside} are outside the teacher's 0..{teacher_depth - 1}")
    return problems


class StudentWithMaps(torch.nn.Module):
    """The student and the learned width maps, trained together; calling it calls the student."""

    def __init__(self, student: torch.nn.Module, student_width: int, teacher_width: int, embeddings: bool):
        super().__init__()
        self.student = student
        needs_map = student_width != teacher_width
        self.hidden_map = torch.nn.Linear(student_width, teacher_width) if needs_map else torch.nn.Identity()
        self.embedding_map = torch.nn.Linear(student_width, teacher_width) if needs_map and embeddings else torch.nn.Identity()

    def forward(self, **inputs):
        return self.student(**inputs)


def _masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weight = mask.unsqueeze(-1).to(student.dtype)
    return (((student - teacher) ** 2) * weight).sum() / (weight.sum() * student.shape[-1]).clamp(min=1)


def hidden_loss(student_hidden, teacher_hidden, layer_map: Sequence[int], width_map: torch.nn.Module,
                mask: torch.Tensor) -> torch.Tensor:
    """Mean over student layers of the masked MSE to its teacher layer (hidden_states[0] is the embeddings)."""
    losses = [_masked_mse(width_map(student_hidden[i + 1].float()), teacher_hidden[t + 1].float(), mask)
              for i, t in enumerate(layer_map)]
    return torch.stack(losses).mean()


def embedding_loss(student_hidden, teacher_hidden, width_map: torch.nn.Module, mask: torch.Tensor) -> torch.Tensor:
    return _masked_mse(width_map(student_hidden[0].float()), teacher_hidden[0].float(), mask)


def attention_loss(student_attentions, teacher_attentions, layer_map: Sequence[int], mask: torch.Tensor) -> torch.Tensor:
    """Mean over student layers, heads and real query positions of KL(teacher || student) over the keys."""
    queries = mask.to(torch.float32)[:, None, :]  # [batch, 1, query]
    losses = []
    for i, t in enumerate(layer_map):
        student, teacher = student_attentions[i].float(), teacher_attentions[t].float()
        kl = (teacher * (teacher.clamp(min=1e-12).log() - student.clamp(min=1e-12).log())).sum(-1)  # [batch, head, query]
        losses.append((kl * queries).sum() / (queries.sum() * kl.shape[1]).clamp(min=1))
    return torch.stack(losses).mean()
