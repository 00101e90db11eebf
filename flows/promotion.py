"""The flow's two gates: data checks that stop a run before training, and the promotion decision after it.

`DataGate` is called after every step (flows/dag.py `run_dag(after=...)`): after
`check_data` and `compare_data` it reads their findings, and stops the run on any the
configuration does not accept (--data-allow), before anything is tokenized or trained,
telling the Prefect UI why (a markdown artifact, tags `data-anomaly`, `not-promoted`).

`judge_and_promote` decides whether the run's INT8 student replaces the production one
(tasks/stages/judge.py `decide`: floors, then the paired test against the champion), and
promotes it through the promotion log (artifacts/promotions.py).
"""

from __future__ import annotations

from typing import Callable

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from artifacts.promotions import ProductionMoved, promote, rolled_back, rolled_back_reason
from artifacts.runs import INT8_ROLE, RunRecord
from artifacts.store import ArtifactRef, ArtifactStore, StoreError
from flows import events
from flows.config import PipelineConfig
from flows.dag import DATA_CHECK_STEPS, PRODUCTION_ROLES
from flows.publish import artifact_key
from tasks.data.checks import blocking
from tasks.errors import DistilleryError
from tasks.formats import read_findings
from tasks.report.markdown import markdown_text
from tasks.stages.judge import decide, signed_judgement

PROMOTED, NOT_PROMOTED, DATA_ANOMALY = "promoted", "not-promoted", "data-anomaly"
PRODUCTION_MOVED = "production-moved"  # with not-promoted: production changed while the run was judged


class DataAnomalies(DistilleryError):
    """New data the checks refuse: the run stops before training."""


Production = tuple[ArtifactRef, RunRecord]  # artifacts.promotions.production_run


def production_roles(production: Production | None) -> dict[str, ArtifactRef]:
    """The production run's artifacts, as the roles the DAG is given (none without a production run)."""
    if production is None:
        return {}
    return {given: production[1].role(role) for given, role in PRODUCTION_ROLES.items()}


class DataGate:
    def __init__(self, store: ArtifactStore, name: str, tag: Callable[[list[str]], object]):
        self.store, self.name, self.tag = store, name, tag
        self.findings: list[dict] = []

    def __call__(self, step: str, ref: ArtifactRef) -> None:
        if step not in DATA_CHECK_STEPS:
            return
        found = read_findings(self.store.open(ref))
        self.findings += found
        stop = blocking(found)
        if not stop:
            return
        names = ",".join(sorted({f["anomaly"] for f in stop}))
        lines = [f"- {f['anomaly']}: {f['message']}" for f in stop]
        message = (f"{self.name}: the new data has {len(stop)} anomal{'y' if len(stop) == 1 else 'ies'} ({step}); the run "
                   f"stops before training and production is unchanged:\n" + "\n".join(lines) +
                   f"\nFix the data, or accept them on purpose with --data-allow {names}")
        try:
            create_markdown_artifact(f"# {self.name}: run stopped by the data checks\n\n"
                                     + "\n".join(f"- {f['anomaly']}: {markdown_text(f['message'])}" for f in stop)
                                     + f"\n\nProduction is unchanged. Accept on purpose with `--data-allow {names}`.\n",
                                     key=artifact_key(self.name, "decision"), description=f"{self.name}: data anomalies")
        except Exception as exc:  # the UI is told best effort; the run stops regardless
            get_run_logger().warning(f"decision artifact not written ({type(exc).__name__}: {exc})")
        self.tag([DATA_ANOMALY, NOT_PROMOTED])
        events.emit(events.DATA_ANOMALY, self.name, {"step": step, "findings": stop, "allow_with": names})
        raise DataAnomalies(message)


def decision_of(config: PipelineConfig, store: ArtifactStore, roles: dict[str, ArtifactRef],
                production: Production | None, int8_test: dict, teacher_test: dict | None = None) -> dict:
    """The promotion decision for this run's INT8 student (`int8_test`, `teacher_test`: the evaluation on test)."""
    judgement = signed_judgement(store.open(roles["judgement"])) if "judgement" in roles else None
    already = production is not None and production[1].role(INT8_ROLE) == roles[INT8_ROLE]
    decision = decide(config.gate, int8_test, judgement, None if production is None else production[0].digest,
                      already_production=already, teacher=teacher_test)
    rolled = rolled_back(store, config.name).get(roles[INT8_ROLE].digest)
    if rolled is not None:  # a rollback sticks: the same model is not promoted again by a rerun
        decision = {**decision, "promote": False, "reasons": [*decision["reasons"], rolled_back_reason(config.name, rolled)]}
    return decision


def promote_if_decided(store: ArtifactStore, name: str, record: ArtifactRef, decision: dict) -> tuple[list[str], str]:
    """Promotes the run when the decision says so; returns the tags that say what happened, and why not ("" if it was)."""
    if not decision["promote"]:
        why = "; ".join(decision["reasons"])
        get_run_logger().warning(f"{name}: not promoted; production is unchanged: {why}")
        events.emit(events.REFUSED, name, {"reasons": decision["reasons"], "decision": decision}, run=record.digest)
        return [NOT_PROMOTED], why
    try:
        promote(store, name, record, by="automatic", decision=decision)
    except ProductionMoved as exc:  # judged against a champion that is no longer production: a stale decision
        get_run_logger().warning(f"{name}: not promoted: {exc}")
        events.emit(events.REFUSED, name, {"reasons": [str(exc)], "decision": decision}, run=record.digest)
        return [NOT_PROMOTED, PRODUCTION_MOVED], str(exc)
    except StoreError as exc:  # e.g. the same model promoted meanwhile, the lock server away: stays latest
        get_run_logger().warning(f"{name}: not promoted: {exc}")
        events.emit(events.REFUSED, name, {"reasons": [str(exc)], "decision": decision}, run=record.digest)
        return [NOT_PROMOTED], str(exc)
    get_run_logger().info(f"{name}: promoted run {record.short} to {name}/production")
    events.emit(events.PROMOTED, name, {"decision": decision, "replaced": decision.get("production_run")}, run=record.digest)
    return [PROMOTED], ""

