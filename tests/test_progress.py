"""Progress lines of a loop resumed from a checkpoint."""

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
