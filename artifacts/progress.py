"""Progress of long stage loops, shown three ways at once.

- throttled log lines (every `every_seconds`): they reach the Prefect UI and CI logs;
- a terminal progress bar (tqdm on stderr) when a person is watching a terminal;
- `on_fraction(label, fraction)`, throttled to `report_seconds`, which the flow
  turns into a Prefect progress artifact.

After the first `ESTIMATE_AFTER` steps of a loop, and every `estimate_seconds` after,
a line says how long the loop has left at the pace it has kept on this machine
("fine_tune_teacher: ~42 min left (1.62 s a step, this machine)"), so a person learns
in the first minute, not at the end, whether a stage takes ten minutes or two hours.

Stages only call `step(label, done, total, **stats)`; where it goes is decided by
whoever runs them. It also carries the stage run's checkpoints (None outside
run_stage), so a long loop can save its state and resume it after a crash.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from artifacts.checkpoints import Checkpoints

ESTIMATE_AFTER = 20  # steps of pace before the first estimate of the time left
BAR_ENV = "DISTILLERY_PROGRESS_BAR"  # "1" forces the bar on, "0" off; default: only on a terminal


def bar_wanted(stream: IO[str]) -> bool:
    setting = os.environ.get(BAR_ENV)
    if setting in ("0", "1"):
        return setting == "1"
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    def __init__(
        self,
        log: Callable[[str], None] | None = None,
        every_seconds: float = 10.0,
        bar: bool | None = None,
        stream: IO[str] | None = None,
        on_fraction: Callable[[str, float], None] | None = None,
        report_seconds: float = 2.0,
        estimate_seconds: float = 60.0,
    ):
        self.log = log or logging.getLogger("distillery").info
        self.every_seconds = every_seconds
        self.stream = stream or sys.stderr
        self.bar = bar_wanted(self.stream) if bar is None else bar
        self.on_fraction = on_fraction
        self.report_seconds = report_seconds
        self.checkpoints: Checkpoints | None = None
        # None until the first step: time.monotonic() counts from boot, so a fresh
        # machine's clock can be younger than the interval.
        self._last_log: float | None = None
        self._last_report: float | None = None
        # (time, steps done) at the first step seen: a resumed loop starts part-way, and
        # its pace is the steps done since then, not since step 0.
        self._started: dict[str, tuple[float, int]] = {}
        self._bars: dict[str, object] = {}
        self.estimate_seconds = estimate_seconds
        self._last_estimate: dict[str, float] = {}  # label -> when its last estimate was logged

    def info(self, message: str) -> None:
        self.log(message)

    def step(self, label: str, done: int, total: int, **stats: float) -> None:
        now = time.monotonic()
        started, done_at_start = self._started.setdefault(label, (now, done))
        finished = done >= total
        if self.bar:
            self._update_bar(label, done, total, stats)
        if self.on_fraction and (finished or self._last_report is None or now - self._last_report >= self.report_seconds):
            self._last_report = now
            self.on_fraction(label, done / total)
        if not finished and self._last_log is not None and now - self._last_log < self.every_seconds:
            self._estimate(label, now, now - started, done - done_at_start, total - done)
            return
        self._last_log = now
        elapsed = now - started
        # The first step sets the clock, so it has no pace yet: "eta 0s" there read as a fact.
        since = done - done_at_start
        eta = f"{elapsed / since * (total - done):.0f}s" if since > 0 and elapsed > 0 else "unknown"
        extras = " ".join(f"{k} {v:.4g}" for k, v in stats.items())
        self.log(f"{label}: {done}/{total} ({100 * done / total:.0f}%) {extras} "
                 f"elapsed {elapsed:.0f}s eta {eta}".replace("  ", " "))
        if not finished:
            self._estimate(label, now, elapsed, since, total - done)
        else:  # a later loop under the same label (one Progress over several stages) starts its own clock
            self._started.pop(label, None)
            self._last_estimate.pop(label, None)

    def _estimate(self, label: str, now: float, elapsed: float, since: int, left: int) -> None:
        """The time left at this loop's own pace: first after ESTIMATE_AFTER steps, then every estimate_seconds."""
        if since < ESTIMATE_AFTER or elapsed <= 0:
            return
        last = self._last_estimate.get(label)
        if last is not None and now - last < self.estimate_seconds:
            return
        self._last_estimate[label] = now
        per_step = elapsed / since
        minutes = per_step * left / 60
        when = f"~{minutes:.0f} min left" if minutes >= 1 else "under a minute left"
        self.log(f"{label}: {when} ({per_step:.2f} s a step, this machine)")

    def _update_bar(self, label: str, done: int, total: int, stats: dict[str, float]) -> None:
        from tqdm import tqdm

        bar = self._bars.get(label)
        if bar is None:
            bar = self._bars[label] = tqdm(total=total, desc=label, unit="step", file=self.stream,
                                           initial=done - 1 if done else 0, dynamic_ncols=True, leave=True)
        bar.update(done - bar.n)
        if stats:
            bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items()}, refresh=False)
        if done >= total:
            bar.close()
            del self._bars[label]
