"""The typed configuration of one pipeline run, validated once, at the edge."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.augment import AugmentParams
from tasks.data import DataParams
from tasks.distil import StudentParams
from tasks.evaluate import EvaluateParams
from tasks.export import ExportParams
from tasks.quantize import QuantizeParams
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
    student: StudentParams = StudentParams()
    export: ExportParams = ExportParams()
    quantize: QuantizeParams = QuantizeParams()
    evaluate: EvaluateParams = EvaluateParams()

    @model_validator(mode="after")
    def _tokenizer_is_the_teachers(self) -> "PipelineConfig":
        # Student and exported models reuse the teacher's vocabulary, so the ids must
        # come from the teacher's tokenizer; it is derived, never set separately.
        if self.tokenize.tokenizer != self.teacher.model:
            self.tokenize = self.tokenize.model_copy(update={"tokenizer": self.teacher.model})
        return self



SECTIONS = ("data", "tokenize", "teacher", "augment", "student", "export", "quantize", "evaluate")
