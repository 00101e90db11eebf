"""Progress lines of a loop resumed from a checkpoint, and of loops run one after another."""

from artifacts import progress as progress_module
from artifacts.progress import Progress


def test_eta_of_a_resumed_loop_uses_the_pace_since_it_resumed(monkeypatch):
    clock = iter([100.0, 110.0])  # two log lines, 10 s apart
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    lines = []
    progress = Progress(lines.append, every_seconds=0, bar=False)
    # Resumed at step 1350 of 1500; 44 steps in 10 s leaves 106 steps, about 24 s.
    progress.step("distil_student", 1350, 1500)
    progress.step("distil_student", 1394, 1500)
    assert lines[0].endswith("eta unknown")
    assert lines[1].endswith("elapsed 10s eta 24s"), lines[1]


def test_a_second_loop_under_the_same_label_has_its_own_clock(monkeypatch):
    clock = iter([0.0, 1000.0, 1000.0, 1010.0])
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    lines = []
    progress = Progress(lines.append, every_seconds=0, bar=False)
    progress.step("fine_tune_teacher", 0, 100)
    progress.step("fine_tune_teacher", 100, 100)  # the first training ends after 1000 s
    progress.step("fine_tune_teacher", 1, 100)  # a second one begins
    progress.step("fine_tune_teacher", 11, 100)  # 10 steps in 10 s, 89 to go
    assert lines[-1].endswith("elapsed 10s eta 89s"), lines[-1]
