"""The training loop shared by teacher fine-tuning, student distillation and QAT.

Plain PyTorch (AdamW, linear warm-up then decay, length-grouped dynamic padding) so
that every step is visible here rather than inside a framework. The batch plan is a
pure function of the seed, so a run resumed from a checkpoint continues with exactly
the batches the interrupted run would have seen.

How long it trains: `epochs` passes, but at least `min_steps` optimisation steps (a
small data set gets more passes rather than too few steps) and at most `max_steps`
(a budget). With `validations` > 0 the model is scored on validation that many times,
evenly spread over the plan; the best weights so far are kept and restored at the
end, and `patience` stops training after that many checks without improvement.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import load_file, load_model, save_file, save_model

from artifacts.stage import Progress
from tasks.data.batching import inference_batches, length_grouped_batches, pad, random_batches
from tasks.measure.metrics import classification_report
from tasks.training.device import autocast, resolve_device, resolve_precision, settle_threads


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
    # torch's default AdamW loops over tensors one by one: ~40% of an MPNet step on CPU.
    fused_optimizer: bool = Field(True, description="fused AdamW (one kernel over all parameters, CPU and CUDA); false: torch's default per-tensor loop, several times slower on CPU")
    min_steps: int = Field(0, ge=0, le=1_000_000, description="least optimisation steps: more passes than `epochs` when the data set is small (0: epochs decide)")
    max_steps: int | None = Field(None, ge=1, le=1_000_000, description="most optimisation steps, whatever epochs and min_steps say (the budget)")
    validations: int = Field(0, ge=0, le=1000, description="validation checks spread evenly over training; the best weights are kept (0: only the final model)")
    patience: int = Field(0, ge=0, le=1000, description="stop after this many validation checks without improvement (0: never stop early)")
    select_by: Literal["accuracy", "macro_f1"] = Field("accuracy", description="validation score that picks the best weights")

    @model_validator(mode="after")
    def _schedule_is_consistent(self):
        if self.max_steps is not None and self.min_steps > self.max_steps:
            raise ValueError(f"min_steps {self.min_steps} exceeds max_steps {self.max_steps}: the floor must be within the budget")
        if self.patience and not self.validations:
            raise ValueError(f"patience {self.patience} needs validation checks to count: set validations > 0, or patience 0")
        if self.patience and self.patience >= self.validations:
            raise ValueError(f"patience {self.patience} must be below validations {self.validations}, "
                             f"or training could never stop early")
        return self

    def runs_on(self) -> tuple[str, str]:
        """(device, precision) to run with; the pipeline resolves 'auto' before keying, plain calls here."""
        device = resolve_device(self.device)
        return device, resolve_precision(self.precision, device, "precision")


# loss(model, batch_indices, input_ids, attention_mask, step) -> scalar tensor; step counts from 1
LossFn = Callable[[torch.nn.Module, np.ndarray, torch.Tensor, torch.Tensor, int], torch.Tensor]


def classification_loss(labels) -> LossFn:
    """Cross-entropy on the true labels (a numpy array indexed by the batch)."""
    labels = torch.as_tensor(labels)

    def loss(model, batch, input_ids, mask, step):
        return F.cross_entropy(model(input_ids=input_ids, attention_mask=mask).logits.float(), labels[batch].to(input_ids.device))

    return loss


def _optimizer(model: torch.nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    """AdamW over the model's trainable weights, where they are (call after `model.to(device)`)."""
    decay, no_decay = [], []
    for name, weight in model.named_parameters():
        if weight.requires_grad:
            (no_decay if weight.ndim < 2 or "LayerNorm" in name else decay).append(weight)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": params.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=params.learning_rate, fused=params.fused_optimizer,
    )


def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    """What actually steps: read back from the optimizer (a restored state may carry its own flags)."""
    fused = all(group.get("fused") for group in optimizer.param_groups)
    return f"{type(optimizer).__name__.lower()}-{'fused' if fused else 'default'}"


def batch_plan(lengths: Sequence[int], params: TrainParams) -> list[np.ndarray]:
    """Every batch of the run in order: `epochs` passes, extended to `min_steps`, cut to `max_steps`.

    A pure function of the lengths and the parameters (the seed included), so a resumed
    run sees the batches the interrupted one would have.
    """
    rng = np.random.default_rng(params.seed)

    def one_pass() -> list[np.ndarray]:
        return (length_grouped_batches(lengths, params.batch_size, rng) if params.group_by_length
                else random_batches(len(lengths), params.batch_size, rng))

    full_epochs, partial = divmod(params.epochs, 1)
    plan: list[np.ndarray] = []
    for epoch in range(int(full_epochs) + (1 if partial else 0)):
        batches = one_pass()
        if epoch == int(full_epochs):
            batches = batches[: max(1, int(len(batches) * partial))]
        plan.extend(batches)
    while len(plan) < params.min_steps:
        plan.extend(one_pass()[: params.min_steps - len(plan)])
    return plan[: params.max_steps] if params.max_steps else plan


def validation_steps(total: int, validations: int) -> list[int]:
    """The steps after which validation is scored: `validations` of them, evenly spread, the last step last."""
    if not validations:
        return []
    return sorted({max(1, round(total * (i + 1) / validations)) for i in range(validations)})


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
    validation_logits: Callable[[torch.nn.Module], np.ndarray] | None = None,
) -> dict:
    """Train in place; returns the history. `pad_to` pads every batch to that length,
    as `padding="max_length"` does (bench/pipeline.py compares it with dynamic padding).
    `validation_logits(model)`: the validation rows' logits, where the model is not fed
    token ids (a teacher above frozen layers, tasks/training/cached.py); default: from the ids."""
    settle_threads(label, progress.info)
    torch.manual_seed(params.seed)
    plan = batch_plan([len(s) for s in sequences], params)
    device, precision = params.runs_on()
    model.to(device)  # before the optimizer: a fused optimizer steps where the weights are
    optimizer = _optimizer(model, params)
    warmup = int(len(plan) * params.warmup_ratio)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (step + 1) / max(1, warmup) if step < warmup else max(0.0, (len(plan) - step) / max(1, len(plan) - warmup)),
    )
    checks = validation_steps(len(plan), params.validations) if validation is not None else []
    best = Best(params.select_by)
    model.train()
    started, running, tokens, padded = time.time(), 0.0, 0, 0
    first, step = 0, 0
    checkpoints = progress.checkpoints
    resumed = checkpoints.latest() if checkpoints else None
    if resumed:
        first, folder = resumed
        running = _restore(folder, model, optimizer, schedule, best)
        progress.info(f"{label}: resumed from the checkpoint at step {first}/{len(plan)}")
    matmul = _MatmulDtype(model)
    for step, batch in enumerate(plan[first:], start=first + 1):
        input_ids, mask = (t.to(device) for t in pad(sequences, batch, pad_id, to_length=pad_to))
        with autocast(precision, device):
            loss = loss_fn(model, batch, input_ids, mask, step)
        matmul.done()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
        tokens += int(mask.sum())
        padded += mask.numel()
        progress.step(label, step, len(plan), loss=running)
        if step in checks:
            assert validation is not None
            scores = _validate(model, validation, pad_id, precision, device, validation_logits)
            improved = best.offer(step, scores, model)
            progress.info(f"{label}: step {step}/{len(plan)} validation accuracy {scores['accuracy']:.4f} "
                          f"macro-F1 {scores['macro_f1']:.4f}{' (best so far)' if improved else ''}")
            model.train()
            if params.patience and best.checks_since_best >= params.patience:
                progress.info(f"{label}: no better validation {params.select_by} in {params.patience} checks; "
                              f"stopping at step {step}, keeping step {best.step}")
                break
        if checkpoints and checkpoints.due() and step < len(plan):
            checkpoints.save(step, lambda folder: _snapshot(folder, model, optimizer, schedule, running, best))
            progress.info(f"{label}: checkpoint saved at step {step}/{len(plan)}")
    seconds = time.time() - started
    trained = max(0, step - first)
    history = {
        "steps": len(plan),
        "steps_run": step,
        "resumed_at_step": first,
        "final_loss": round(running, 5),
        "train_seconds": round(seconds, 2),
        "examples_per_second": round(sum(len(b) for b in plan[first:first + trained]) / max(seconds, 1e-9), 2),
        "padding_share": round(1 - tokens / max(1, padded), 4),
        "device": device,
        "precision": precision,
        "matmul_dtype": matmul.seen,
        "optimizer": optimizer_kind(optimizer),
    }
    if best.step is not None:
        best.restore(model)
        history["best_step"] = best.step
        history["validation_curve"] = best.curve
    if validation is not None:
        scores = best.scores if best.step is not None else _validate(model, validation, pad_id, precision, device,
                                                                     validation_logits)
        history["validation_accuracy"] = round(scores["accuracy"], 5)
        history["validation_macro_f1"] = round(scores["macro_f1"], 5)
        progress.info(f"{label}: validation accuracy {history['validation_accuracy']:.4f}")
    model.eval()
    model.to("cpu")  # saved and exported from the CPU
    return history


class _MatmulDtype:
    """The dtype the model's first Linear layer produced in the first training step: what
    the precision setting actually did (bfloat16 under bf16 autocast), read off the model."""

    def __init__(self, model):
        self.seen: str | None = None
        linear = next((m for m in model.modules() if isinstance(m, torch.nn.Linear)), None)
        self._hook = linear.register_forward_hook(self._record) if linear is not None else None

    def _record(self, module, inputs, output) -> None:
        if self.seen is None:
            self.seen = str(output.dtype).removeprefix("torch.")

    def done(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def _validate(model: torch.nn.Module, validation: tuple[Sequence[np.ndarray], np.ndarray], pad_id: int,
              precision: str, device: str, logits_of: Callable[[torch.nn.Module], np.ndarray] | None = None) -> dict:
    logits = (logits_of(model) if logits_of is not None
              else predict_logits(model, validation[0], pad_id, precision=precision, device=device))
    return classification_report(logits.argmax(1), validation[1], logits.shape[1])


class Best:
    """The best weights seen at the validation checks, kept on the CPU, and every check's scores."""

    def __init__(self, select_by: str):
        self.select_by = select_by
        self.step: int | None = None
        self.scores: dict = {}
        self.state: dict[str, torch.Tensor] = {}
        self.curve: list[dict] = []
        self.checks_since_best = 0

    def offer(self, step: int, scores: dict, model: torch.nn.Module) -> bool:
        self.curve.append({"step": step, "accuracy": round(scores["accuracy"], 5), "macro_f1": round(scores["macro_f1"], 5)})
        # Ties keep the earlier weights: a later check must be strictly better to win.
        if self.step is not None and scores[self.select_by] <= self.scores[self.select_by]:
            self.checks_since_best += 1
            return False
        self.step, self.scores, self.checks_since_best = step, scores, 0
        self.state = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}
        return True

    def restore(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.state)

    def save(self, folder: Path) -> dict:
        if self.step is not None:
            save_file({name: value.contiguous() for name, value in self.state.items()}, str(folder / "best.safetensors"))
        return {"step": self.step, "scores": {k: self.scores[k] for k in ("accuracy", "macro_f1")} if self.scores else {},
                "curve": self.curve, "checks_since_best": self.checks_since_best}

    def load(self, folder: Path, saved: dict) -> None:
        self.step, self.curve, self.checks_since_best = saved["step"], saved["curve"], saved["checks_since_best"]
        self.scores = dict(saved["scores"])
        if self.step is not None:
            self.state = load_file(str(folder / "best.safetensors"))


def _snapshot(folder: Path, model: torch.nn.Module, optimizer, schedule, running: float, best: Best) -> None:
    """Everything needed to continue exactly where training stopped; no pickled objects."""
    save_model(model, str(folder / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "rng": torch.get_rng_state(), "running": torch.tensor(running)}, folder / "trainer.pt")
    (folder / "best.json").write_text(json.dumps(best.save(folder)))


def _restore(folder: Path, model: torch.nn.Module, optimizer, schedule, best: Best) -> float:
    load_model(model, str(folder / "model.safetensors"))
    state = torch.load(folder / "trainer.pt", weights_only=True)  # tensors and plain values only
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["rng"])
    if (folder / "best.json").exists():
        best.load(folder, json.loads((folder / "best.json").read_text()))
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
