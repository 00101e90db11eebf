"""The typed configuration of one pipeline run, validated once, at the edge."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from tasks.data.checks import CheckParams
from tasks.stages.augment import AugmentParams
from tasks.stages.distil import FROM_TEACHER, StudentParams
from tasks.stages.distil import layer_losses as distil_layer_losses
from tasks.errors import DistilleryError
from tasks.stages.evaluate import EvaluateParams
from tasks.stages.export import ExportParams
from tasks.stages.judge import GateParams
from tasks.models.loading import tokenizer_source
from tasks.stages.qat import QATParams
from tasks.stages.quantize import QuantizeParams
from tasks.stages.soft_labels import SoftLabelParams
from tasks.data.sources import DataParams
from tasks.models.loading import TINY, TINY_MPNET
from tasks.stages.teacher import TeacherParams
from tasks.stages.teacher_features import TeacherFeatureParams
from tasks.stages.tokenize import TokenizeParams

# One segment of a store alias (artifacts/store.py's ALIAS_PATTERN), without its dots
# and underscores: the name also makes Prefect artifact keys (<name>-report), which
# allow neither, and mapping '_' to '-' would give my_data and my-data the same keys.
WORKLOAD_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
WORKLOAD_NAME_MAX = 64


def check_workload_name(name: str) -> str:
    """The name, or a DistilleryError saying what a name may hold and suggesting one."""
    if WORKLOAD_NAME.match(name) and len(name) <= WORKLOAD_NAME_MAX:
        return name
    suggestion = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:WORKLOAD_NAME_MAX] or "my-data"
    raise DistilleryError(
        f"invalid workload name {name!r}: a name is 1 to {WORKLOAD_NAME_MAX} lower-case letters, digits or '-', "
        f"starting with a letter or digit, because it names the store aliases <name>/latest and <name>/report and the Prefect artifacts <name>-report; "
        f"use e.g. --name {suggestion}")


class PipelineConfig(BaseModel):
    """Every parameter of every stage. A preset (flows/presets.py) fills it in."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("emotion", description="workload name: the store aliases <name>/latest and <name>/report, the "
                      "report's title, the Prefect run's name and tags")
    data: DataParams = DataParams()
    checks: CheckParams = CheckParams()
    tokenize: TokenizeParams = TokenizeParams()
    teacher: TeacherParams = TeacherParams()
    augment: AugmentParams = AugmentParams()
    soft_labels: SoftLabelParams = SoftLabelParams()
    student: StudentParams = StudentParams()
    export: ExportParams = ExportParams()
    quantize: QuantizeParams = QuantizeParams()
    qat: QATParams = QATParams()
    evaluate: EvaluateParams = EvaluateParams()
    gate: GateParams = GateParams()

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        try:
            return check_workload_name(name)
        except DistilleryError as exc:
            raise PydanticCustomError("workload_name", str(exc)) from None

    def check(self) -> None:
        """Checks across sections that pydantic cannot phrase as flags; DistilleryError if one fails.

        Whether layer-to-layer losses can run needs the tokenizers and models loaded:
        flows/pipeline.py `preflight` checks that, before any work."""
        if self.student.layer_map is not None and not distil_layer_losses(self.student):
            raise DistilleryError(
                f"--student-layer-map {','.join(map(str, self.student.layer_map))} maps student layers to teacher layers for "
                f"the layer losses, but all of them are off: set --student-hidden-weight, --student-attention-weight or "
                f"--student-embedding-weight above 0, or drop --student-layer-map")

    @property
    def teacher_tokenizer(self) -> str:
        return tokenizer_source(self.teacher.model)

    @property
    def student_tokenizer(self) -> str:
        return self.teacher_tokenizer if self.student.init == FROM_TEACHER else tokenizer_source(self.student.init)

    @property
    def shared_tokenizer(self) -> bool:
        return self.teacher_tokenizer == self.student_tokenizer

    @property
    def teacher_tokens(self) -> TokenizeParams:
        return self.tokenize.model_copy(update={"tokenizer": self.teacher_tokenizer})

    @property
    def teacher_features(self) -> TeacherFeatureParams:
        """The frozen part of the teacher, run once: keyed by the model, the depth and where and how it runs,
        not by the teacher's schedule (the seed only for a model whose weights are random)."""
        teacher = self.teacher
        if teacher.frozen_layers == 0:
            raise ValueError("no teacher features: --teacher-frozen-layers is 0")
        device, precision = teacher.runs_on()  # as the teacher trains (resolved at the edge already, flows/presets.py)
        return TeacherFeatureParams(model=teacher.model, frozen_layers=teacher.frozen_layers, precision=precision,
                                    device=device, seed=teacher.seed if teacher.model in (TINY, TINY_MPNET) else 0)

    @property
    def student_tokens(self) -> TokenizeParams:
        return self.tokenize.model_copy(update={"tokenizer": self.student_tokenizer})


SECTIONS = ("data", "checks", "tokenize", "teacher", "augment", "soft_labels", "student", "export", "quantize", "qat", "evaluate", "gate")
