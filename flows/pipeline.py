"""The generic pipeline flow: the DAG of stages (declared once, in flows/dag.py), each
step a Prefect task over the one cache.

Texts are the currency between teacher and student; token ids never cross a
tokenizer boundary. The teacher runs in one cached place (`soft_labels`).

`stage_task` is the one place a stage becomes a Prefect task. Its body is the one
cache (artifacts/cache.py `cached_or_run`: look up by key, verify, else lock, run and
note, one computation per key however many runs ask at once); Prefect runs the task,
keeps its state (`Cached` or `Completed`), logs, progress artifact and retries, and
caches nothing itself, so no second index can disagree with the store's.

A workload's production run (`<name>/production`, artifacts/promotions.py) enters the DAG
as given roles: new data is compared with its data before training, and the new INT8
student is judged against its model after evaluation (flows/promotion.py: the data gate
stops the run on an unaccepted finding; the decision promotes, or not).

After the stages, every run writes its report (tasks/stages/report.py) and publishes it
as Prefect markdown and table artifacts from the flow itself, so a run served
entirely from the cache still shows what it delivered. Last it publishes its run
record (artifacts/runs.py): which artifact plays which role, the data findings and the
promotion decision; `<workload>/latest` points at it, `<workload>/production` too when the
run was promoted, and predict, serve, explain and the benchmarks read roles from it.

A run goes by its workload's name (`name`, else the preset's; a smoke run's is
`<name>-smoke`, flows/presets.py): the aliases, the promotion log, the report's title,
the Prefect run's name (`<name>[-smoke]-<time>`) and its tags (`workload:<name>`,
`preset:<preset>`, `smoke`), so runs of many data sets on one server and one store stay
apart, and no smoke run ever moves a real workload's production model.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prefect import flow, get_client, get_run_logger, runtime, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from artifacts.cache import cached_or_run
from artifacts.locks import lease_seconds_from_env
from artifacts.promotions import production_run
from artifacts.runs import INT8_ROLE, RunRecord, publish_run
from artifacts.stage import Progress, Stage
from artifacts.store import DEFAULT_STORE, ArtifactRef, ArtifactStore, StoreError
from flows.config import PipelineConfig
from flows.presets import PRESETS, Overrides, Workload, build_config
from flows.promotion import DataGate, decision_of, production_roles, promote_if_decided
from flows.publish import artifact_key, publish_report, write_report
from flows.version import code_tag, code_version, refuse_other_code
from flows.dag import STEP_NAMES, run_dag  # noqa: F401  (STEP_NAMES: the DAG's steps, for callers of the flow)
from tasks.stages import distil
from tasks.models.alignment import vocabulary_alignment
from tasks.errors import DistilleryError
from tasks.formats import read_evaluation
from tasks.models.loading import check_weights, load_config, load_tokenizer
from tasks.data.sources import is_hub_id, load_splits

def preflight(config: PipelineConfig) -> None:
    """Every check that needs no training, so bad input fails in seconds, storing nothing."""
    config.check()
    try:
        lease_seconds_from_env()
    except StoreError as exc:
        raise DistilleryError(str(exc)) from None
    load_config(config.teacher.model)
    load_tokenizer(config.teacher_tokenizer)
    if config.student.init == distil.FROM_TEACHER:
        init_config = load_config(config.teacher.model)
    else:
        init_config = load_config(config.student.init)
        check_weights(config.student.init)
        try:
            load_tokenizer(config.student_tokenizer)
        except DistilleryError as exc:
            raise DistilleryError(f"--student-init {config.student.init}: its tokenizer cannot be loaded: {exc}") from None
    kept = distil.student_layers(config.student, init_config.num_hidden_layers)
    if distil.layer_losses(config.student):
        check_layer_losses(config, kept)
    if not is_hub_id(config.data.source):
        load_splits(config.data)  # reads and checks every split (seconds); Hub sources are checked by fetch_dataset


def check_layer_losses(config: PipelineConfig, kept_layers: list[int]) -> None:
    """Layer-to-layer losses need tokens that line up with the teacher's and a layer map that fits both models."""
    if not config.shared_tokenizer:
        overlap = vocabulary_alignment(load_tokenizer(config.teacher_tokenizer), load_tokenizer(config.student_tokenizer))
        if not overlap["aligned"]:
            raise DistilleryError(
                f"layer-to-layer distillation (--student-hidden-weight, --student-attention-weight, --student-embedding-weight) "
                f"compares the two models position by position, but the teacher's tokenizer ({config.teacher_tokenizer!r}) "
                f"holds only {overlap['shared_share']:.1%} of the pieces of the student's ({config.student_tokenizer!r}), so "
                f"they cut text differently: set those weights to 0, or pick a student whose tokenizer the teacher shares "
                f"(--student-init {distil.FROM_TEACHER}, or minilm with the mpnet teacher)")
    distil.layer_map_of(config.student, kept_layers, load_config(config.teacher.model).num_hidden_layers)


def task_progress(stage: Stage) -> Progress:
    """Log lines, a terminal bar, and a Prefect progress artifact made on the first step."""
    logger = get_run_logger()
    artifact_id, failed = None, False

    def on_fraction(label: str, fraction: float) -> None:
        # Best effort: a server that is briefly away (restarting, say) must not fail the training.
        nonlocal artifact_id, failed
        percent = round(100 * fraction, 1)
        try:
            if artifact_id is None:
                artifact_id = create_progress_artifact(percent, key=artifact_key(stage.name, "progress"), description=label)
            else:
                update_progress_artifact(artifact_id, percent)
        except Exception as exc:
            if not failed:
                logger.warning(f"{stage.name}: progress artifact not updated ({type(exc).__name__}: {exc}); training goes on")
            failed = True

    return Progress(logger.info, on_fraction=on_fraction, report_seconds=10.0)


CACHED = "Cached"  # the state of a task whose artifact was found, not made (Prefect's own name for it)


def stage_task(step: str, stage: Stage, store: ArtifactStore):
    """The stage as a Prefect task whose body is the one cache; the store object travels with it."""

    def run(params: Any, inputs: dict[str, ArtifactRef]) -> State:
        outcome = cached_or_run(stage, params, inputs, store, task_progress(stage))
        if outcome.cached:
            get_run_logger().info(f"{step}: cached, reusing {stage.kind} {outcome.ref.short}")
            return Completed(data=outcome.ref, name=CACHED)
        return Completed(data=outcome.ref)

    return task(run, name=step, cache_policy=NO_CACHE, persist_result=False, retries=RETRIES,
                retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_if_transient)


# A stage that touches the store (S3), the lock server (Redis) or the Hub can meet a network
# blip; it is retried after 5, then 30 seconds. Bad input and broken artifacts are not
# transient: they fail at once, with their message.
RETRIES, RETRY_DELAYS = 2, [5, 30]


def is_transient(exc: BaseException | None) -> bool:
    """Whether a stage's failure is worth retrying: the network or a file system, not the data or the code."""
    if exc is None or isinstance(exc, (DistilleryError, StoreError)):
        return False
    if isinstance(exc, (OSError, TimeoutError)):  # ConnectionError, socket timeouts, S3 errors as s3fs raises them
        return True
    try:
        import redis
    except ImportError:
        return False
    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))


def retry_if_transient(task, task_run, state) -> bool:
    return is_transient(state.result(raise_on_failure=False))


class StageRunner:
    """Calls stages as tasks and notes, per step, whether it was computed or cached."""

    def __init__(self, store: ArtifactStore):
        self.store = store
        self.stages: dict[str, dict] = {}

    def __call__(self, step: str, stage: Stage, params: Any, **inputs: ArtifactRef) -> ArtifactRef:
        started = time.time()
        state: State = stage_task(step, stage, self.store)(params, inputs, return_state=True)
        ref = state.result()  # raises the stage's own error if it failed
        state_name = "cached" if state.name == CACHED else "computed"
        self.stages[step] = {
            "state": state_name,
            "stage": stage.name,
            "artifact": ref.digest,
            "seconds": round(time.time() - started, 3),
        }
        return ref


def resolve(workload: Workload, data: str | None, smoke: bool, overrides: Overrides | None, store: str | None,
            name: str | None = None) -> tuple[PipelineConfig, str]:
    """The run's configuration and store; unset values come from the environment."""
    if workload not in PRESETS:
        raise DistilleryError(f"unknown preset {workload!r}: use one of {', '.join(PRESETS)}")
    config = build_config(PRESETS[workload](), data or os.environ.get("DISTILLERY_DATA"), smoke, overrides, name=name)
    return config, store_root(store)


def store_root(store: str | None) -> str:
    return store or os.environ.get("DISTILLERY_STORE") or DEFAULT_STORE


def run_tags(name: str, preset: str, smoke: bool) -> list[str]:
    return [f"workload:{name}", f"preset:{preset}", *(["smoke"] if smoke else [])]


def flow_run_name() -> str:
    """`<name>[-smoke]-<UTC time>`, from the run's parameters (Prefect names the run before the flow body runs)."""
    parameters = runtime.flow_run.parameters
    name = parameters.get("name") or parameters.get("workload") or "emotion"
    smoke = "-smoke" if parameters.get("smoke") else ""
    return f"{name}{smoke}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def tag_run(tags: list[str]) -> dict:
    """Adds the tags to this flow run on the server (keeping a deployment's own); returns the run's id, name and tags.

    Best effort, like progress artifacts: a server that is briefly away must not fail the run.
    """
    run_id, current = runtime.flow_run.id, list(runtime.flow_run.tags)
    merged = current + [t for t in tags if t not in current]
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(run_id, tags=merged)
    except Exception as exc:
        get_run_logger().warning(f"flow run not tagged {tags} ({type(exc).__name__}: {exc}); the run goes on")
    return {"id": str(run_id), "name": runtime.flow_run.name, "tags": merged}


@flow(name="distillery", flow_run_name=flow_run_name, log_prints=True)
def distillery(
    workload: Workload = "emotion",
    data: str | None = None,
    smoke: bool = False,
    overrides: Overrides | None = None,
    store: str | None = None,
    name: str | None = None,
    checked: dict | None = None,
) -> dict:
    """Fetch, tokenize, fine-tune a teacher, soft-label, distil a student, export, quantize, evaluate.

    workload: the preset (flows/presets.py: emotion, sst2, generic); data: Hub id or
    folder (default: env DISTILLERY_DATA, else the preset's; generic has none);
    smoke: small slice and tiny model; overrides: stage parameters, e.g.
    {"quantize": {"approach": "static"}} or {"data": {"text_column": "body"}}; store:
    artifact store root (default: env DISTILLERY_STORE, else .distillery); name: the
    workload's name (aliases <name>/latest and <name>/report, report title, run name
    and tags; default: the preset's name, required for generic); checked: the whole
    configuration, already built from these and checked by the caller (flows/cli.py),
    so it is used as it is: a run builds and checks its configuration once.
    """
    code = code_version()
    refuse_other_code(runtime.deployment.version, code)  # a worker at other code than its deployment's: before any work
    if checked is None:
        config, store = resolve(workload, data, smoke, overrides, store, name)
    else:
        config, store = PipelineConfig.model_validate(checked), store_root(store)
    tags = run_tags(config.name, workload, smoke) + [code_tag(code)]
    flow_run = tag_run(tags)
    if checked is None:
        preflight(config)
    artifacts = ArtifactStore(store)
    stage = StageRunner(artifacts)
    production = production_run(artifacts, config.name)  # the champion, and the data it was trained on
    data_gate = DataGate(artifacts, config.name, tag=lambda outcome: tag_run(tags + outcome))

    roles = run_dag(config, stage, given=production_roles(production), after=data_gate)

    results = read_evaluation(artifacts.open(roles["evaluation"]))
    decision = decision_of(config, artifacts, roles, production, results["models"][INT8_ROLE], results["models"]["teacher"])
    run_report = write_report(config.name, stage.stages, roles["evaluation"], artifacts.root, smoke=smoke,
                              data_findings=data_gate.findings, decision=decision)
    artifacts.set_alias(f"{config.name}/report", run_report)
    location = publish_report(config.name, artifacts, run_report, smoke=smoke)
    if results["shortfall"]["flagged"]:
        get_run_logger().warning("the INT8 student falls short of its teacher on validation: "
                                 + "; ".join(results["shortfall"]["reasons"]))
    record = publish_run(artifacts, RunRecord(workload=config.name, roles={**roles, "report": run_report},
                                              steps={step: s["artifact"] for step, s in stage.stages.items()},
                                              labels=results["labels"], data_findings=data_gate.findings,
                                              decision=decision, code=code))
    artifacts.set_alias(f"{config.name}/latest", record)
    outcome, refused = promote_if_decided(artifacts, config.name, record, decision)
    flow_run = tag_run(tags + outcome)
    return {"workload": config.name, "preset": workload, "labels": results["labels"], "flow_run": flow_run,
            "stages": stage.stages, "metrics": results["models"], "shortfall": results["shortfall"],
            "store": artifacts.root, "run": record.digest, "promotion": {"outcome": outcome[0], **decision, "refused": refused},
            "data_findings": data_gate.findings, "code": code,
            "report": {"artifact": run_report.digest, "location": location}}


