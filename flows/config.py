"""The typed configuration of one pipeline run, validated once, at the edge."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tasks.augment import AugmentParams
from tasks.distil import FROM_TEACHER, StudentParams
from tasks.errors import DistilleryError
from tasks.evaluate import EvaluateParams
from tasks.export import ExportParams
from tasks.models import tokenizer_source
from tasks.qat import QATParams
from tasks.quantize import QuantizeParams
from tasks.soft_labels import SoftLabelParams
from tasks.sources import DataParams
from tasks.teacher import TeacherParams
from tasks.tokenize import TokenizeParams


class PipelineConfig(BaseModel):
    """Every parameter of every stage. A preset (flows/presets.py) fills it in."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("emotion", pattern=r"^[a-z0-9][a-z0-9_-]*$", description="workload name, used for the store alias <name>/latest")
    data: DataParams = DataParams()
    tokenize: TokenizeParams = TokenizeParams()
    teacher: TeacherParams = TeacherParams()
    augment: AugmentParams = AugmentParams()
    soft_labels: SoftLabelParams = SoftLabelParams()
    student: StudentParams = StudentParams()
    export: ExportParams = ExportParams()
    quantize: QuantizeParams = QuantizeParams()
    qat: QATParams = QATParams()
    evaluate: EvaluateParams = EvaluateParams()

    def check(self) -> None:
        """Checks across sections that pydantic cannot phrase as flags; DistilleryError if one fails."""
        # Hidden states are compared token by token: with two tokenizers the positions
        # do not correspond, so the loss would teach noise.
        if self.student.hidden_weight > 0 and not self.shared_tokenizer:
            raise DistilleryError(
                f"--student-hidden-weight {self.student.hidden_weight:g} matches hidden states token by token, but the "
                f"student (--student-init {self.student.init}) reads the tokenizer of {self.student_tokenizer!r} and the "
                f"teacher (--teacher {self.teacher.model}) that of {self.teacher_tokenizer!r}: use --student-hidden-weight 0, "
                f"or --student-init {FROM_TEACHER} (or a student with the teacher's tokenizer)")

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
    def student_tokens(self) -> TokenizeParams:
        return self.tokenize.model_copy(update={"tokenizer": self.student_tokenizer})


SECTIONS = ("data", "tokenize", "teacher", "augment", "soft_labels", "student", "export", "quantize", "qat", "evaluate")
