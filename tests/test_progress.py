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


def test_after_twenty_steps_the_time_left_is_estimated_and_updated_at_this_machines_pace(monkeypatch):
    now, at = [0.0], [0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    lines = []  # (step, line)
    progress = Progress(lambda line: lines.append((at[0], line)), every_seconds=1e9, bar=False, estimate_seconds=60)
    for step in range(1, 1501):  # 1.5 s a step, then 3 s a step from step 200 (another job took a core)
        now[0] += 1.5 if step < 200 else 3.0
        at[0] = step
        progress.step("fine_tune_teacher", step, 1500)
    estimates = [(step, line) for step, line in lines if "left" in line]
    # The clock starts at step 1, so after step 21 it has 20 steps of pace: 1,479 left at 1.5 s, ~37 min.
    assert estimates[0] == (21, "fine_tune_teacher: ~37 min left (1.50 s a step, this machine)"), estimates[0]
    assert lines.index(estimates[0]) == 1  # the second line of the loop, right after the first step's
    assert 60 < len(estimates) < 80  # updated every minute of the ~72 min
    paces = [float(line.split("(")[1].split(" s a step")[0]) for _, line in estimates]
    assert paces == sorted(paces) and paces[-1] > 2.5  # the slower pace shows as it goes


def test_a_short_loop_gets_no_estimate(monkeypatch):
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    lines = []
    progress = Progress(lines.append, every_seconds=0, bar=False)
    for step in range(1, 21):
        progress.step("soft_labels", step, 20)
    assert not [line for line in lines if "left" in line]
