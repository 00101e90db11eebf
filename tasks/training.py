"""The training loop shared by teacher fine-tuning, student distillation and QAT.

Plain PyTorch (AdamW, linear warm-up then decay, length-grouped dynamic padding) so
that every step is visible here rather than inside a framework. The batch plan is a
pure function of the seed, so a run resumed from a checkpoint continues with exactly
the batches the interrupted run would have seen.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_model, save_model

from artifacts.stage import Progress
from tasks.batching import inference_batches, length_grouped_batches, pad, random_batches
from tasks.measure import accuracy
from tasks.precision import autocast, resolve_device, resolve_precision


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(3, gt=0, le=100, description="passes over the training split (fractions allowed)")
    batch_size: int = Field(32, ge=1, le=4096, description="examples per optimisation step")
    learning_rate: float = Field(5e-5, gt=0, lt=1, description="peak AdamW learning rate")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="share of steps spent warming up the learning rate")
    weight_decay: float = Field(0.01, ge=0, lt=1, description="AdamW weight decay (not applied to biases and LayerNorm)")
    group_by_length: bool = Field(True, description="batch examples of similar length together to pad less")
    seed: int = Field(42, description="seed for initialisation, dropout and batch order")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="fp32, or bf16 autocast (weights and optimizer stay FP32); auto: bf16 where the hardware has it natively (AMX or AVX512-BF16, CUDA)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train: auto picks cuda when torch sees a GPU")

    def runs_on(self) -> tuple[str, str]:
        """(device, precision) to run with; the pipeline resolves 'auto' before keying, plain calls here."""
        device = resolve_device(self.device)
        return device, resolve_precision(self.precision, device, "precision")


# loss(model, batch_indices, input_ids, attention_mask) -> scalar tensor
LossFn = Callable[[torch.nn.Module, np.ndarray, torch.Tensor, torch.Tensor], torch.Tensor]


def classification_loss(labels) -> LossFn:
    """Cross-entropy on the true labels (a numpy array indexed by the batch)."""
    labels = torch.as_tensor(labels)

    def loss(model, batch, input_ids, mask):
        return F.cross_entropy(model(input_ids=input_ids, attention_mask=mask).logits.float(), labels[batch].to(input_ids.device))

    return loss


def _optimizer(model: torch.nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, weight in model.named_parameters():
        (no_decay if weight.ndim < 2 or "LayerNorm" in name else decay).append(weight)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": params.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=params.learning_rate,
    )


def train(
    model: torch.nn.Module,
    sequences: Sequence[np.ndarray],
    loss_fn: LossFn,
    params: TrainParams,
    progress: Progress,
    label: str,
    pad_id: int,
    validation: tuple[Sequence[np.ndarray], np.ndarray] | None = None,
    pad_to: int | None = None,
) -> dict:
    """Train in place; returns the history. `pad_to` pads every batch to that length,
    as `padding="max_length"` does (bench/pipeline.py compares it with dynamic padding)."""
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    lengths = [len(s) for s in sequences]
    full_epochs, partial = divmod(params.epochs, 1)
    plan: list[np.ndarray] = []
    for epoch in range(int(full_epochs) + (1 if partial else 0)):
        batches = (length_grouped_batches(lengths, params.batch_size, rng) if params.group_by_length
                   else random_batches(len(lengths), params.batch_size, rng))
        if epoch == int(full_epochs):
            batches = batches[: max(1, int(len(batches) * partial))]
        plan.extend(batches)
    optimizer = _optimizer(model, params)
    warmup = int(len(plan) * params.warmup_ratio)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (step + 1) / max(1, warmup) if step < warmup else max(0.0, (len(plan) - step) / max(1, len(plan) - warmup)),
    )
    device, precision = params.runs_on()
    model.to(device)
    model.train()
    started, running, tokens, padded = time.time(), 0.0, 0, 0
    first = 0
    checkpoints = progress.checkpoints
    resumed = checkpoints.latest() if checkpoints else None
    if resumed:
        first, folder = resumed
        running = _restore(folder, model, optimizer, schedule)
        progress.info(f"{label}: resumed from the checkpoint at step {first}/{len(plan)}")
    for step, batch in enumerate(plan[first:], start=first + 1):
        input_ids, mask = (t.to(device) for t in pad(sequences, batch, pad_id, to_length=pad_to))
        with autocast(precision, device):
            loss = loss_fn(model, batch, input_ids, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
        tokens += int(mask.sum())
        padded += mask.numel()
        progress.step(label, step, len(plan), loss=running)
        if checkpoints and checkpoints.due() and step < len(plan):
            checkpoints.save(step, lambda folder: _snapshot(folder, model, optimizer, schedule, running))
            progress.info(f"{label}: checkpoint saved at step {step}/{len(plan)}")
    seconds = time.time() - started
    history = {
        "steps": len(plan),
        "resumed_at_step": first,
        "final_loss": round(running, 5),
        "train_seconds": round(seconds, 2),
        "examples_per_second": round(sum(len(b) for b in plan[first:]) / seconds, 2),
        "padding_share": round(1 - tokens / max(1, padded), 4),
        "device": device,
        "precision": precision,
    }
    if validation is not None:
        logits = predict_logits(model, validation[0], pad_id, precision=precision, device=device)
        history["validation_accuracy"] = round(accuracy(logits.argmax(1), validation[1]), 5)
        progress.info(f"{label}: validation accuracy {history['validation_accuracy']:.4f}")
    model.eval()
    model.to("cpu")  # saved and exported from the CPU
    return history


def _snapshot(folder: Path, model: torch.nn.Module, optimizer, schedule, running: float) -> None:
    """Everything needed to continue exactly where training stopped; no pickled objects."""
    save_model(model, str(folder / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "rng": torch.get_rng_state(), "running": torch.tensor(running)}, folder / "trainer.pt")


def _restore(folder: Path, model: torch.nn.Module, optimizer, schedule) -> float:
    load_model(model, str(folder / "model.safetensors"))
    state = torch.load(folder / "trainer.pt", weights_only=True)  # tensors and plain values only
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["rng"])
    return float(state["running"])


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, sequences: Sequence[np.ndarray], pad_id: int, batch_size: int = 128,
                   progress: Progress | None = None, label: str = "", precision: str = "fp32", device: str = "cpu") -> np.ndarray:
    """Logits of every sequence (as FP32), in length-sorted padded batches; `progress` sees each batch."""
    model.eval()
    model.to(device)
    out: np.ndarray | None = None
    batches = inference_batches([len(s) for s in sequences], batch_size)
    for done, batch in enumerate(batches, start=1):
        input_ids, mask = (t.to(device) for t in pad(sequences, batch, pad_id))
        with autocast(precision, device):
            logits = model(input_ids=input_ids, attention_mask=mask).logits.float().cpu().numpy()
        if progress is not None:
            progress.step(label, done, len(batches))
        if out is None:
            out = np.zeros((len(sequences), logits.shape[1]), dtype=np.float32)
        out[batch] = logits
    assert out is not None, "no sequences to predict"
    return out
