"""The pools' job templates let a flow run choose only harmless knobs (deployments/job-templates/).

What chooses what a worker executes (command, env, working_dir, image, volumes,
privileges, networks, namespace, service account, cluster config, credentials) is fixed
in the template, so only whoever administers the pool changes it. Checked with Prefect's
own template handling: the server's validation of a flow run's job variables (what
`prefect deployment run --job-variable` meets) and the worker's filling-in of the
template. tests/test_team.py tries the same variables on the real stack's process pool.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from prefect.utilities.schema_tools.validation import ValidationError, validate
from prefect.utilities.templating import apply_values
from prefect.workers.process import ProcessJobConfiguration

TEMPLATES = Path(__file__).resolve().parents[1] / "deployments" / "job-templates"
# What a flow run may set: names, labels, log streaming, resource requests and limits.
HARMLESS = {"name", "labels", "stream_output", "mem_limit", "auto_remove", "cpu_request", "memory_request",
            "memory_limit", "finished_job_ttl", "job_watch_timeout_seconds", "pod_watch_timeout_seconds"}
MARKER = "/tmp/distillery-job-variable-ran"
HOSTILE = {
    "command": f"touch {MARKER}",
    # Python imports `antigravity` for this warning filter, which opens $BROWSER: a shell command.
    "env": {"PYTHONWARNINGS": "ignore::antigravity.Foo::0", "BROWSER": f"sh -c 'touch {MARKER}' #%s"},
    "env.PYTHONPATH": "/tmp/evil",
    "working_dir": "/tmp/evil",
    "image": "evil/image:latest",
    "image_pull_policy": "Always",
    "volumes": ["/:/host"],
    "privileged": True,
    "networks": ["host"],
    "network_mode": "host",
    "namespace": "kube-system",
    "service_account_name": "cluster-admin",
    "cluster_config": {"context_name": "evil"},
    "credentials_secret": "someone-elses-secret",
}


def template(kind: str) -> dict:
    return json.loads((TEMPLATES / f"{kind}.json").read_text())


@pytest.mark.parametrize("kind", ["process", "docker", "kubernetes"])
def test_only_harmless_knobs_are_variables(kind):
    t = template(kind)
    declared = set(t["variables"]["properties"])
    assert declared <= HARMLESS, declared - HARMLESS
    used = set(re.findall(r"{{\s*(\w+)\s*}}", json.dumps(t["job_configuration"])))
    assert used <= declared, used - declared
    assert t["variables"].get("additionalProperties") is False


@pytest.mark.parametrize("kind", ["process", "docker", "kubernetes"])
@pytest.mark.parametrize("variable", sorted(HOSTILE))
def test_the_server_refuses_a_flow_run_setting_a_fixed_variable(kind, variable):
    # As prefect/server/api/validation.py _validate_work_pool_job_variables checks a flow run's job variables.
    schema = template(kind)["variables"]
    validate({}, schema, raise_on_error=True, preprocess=True, ignore_required=False, allow_none_with_default=True)
    with pytest.raises(ValidationError):
        validate({variable: HOSTILE[variable]}, schema, raise_on_error=True, preprocess=True, ignore_required=False,
                 allow_none_with_default=True)


def test_a_harmless_knob_is_accepted():
    schema = template("kubernetes")["variables"]
    validate({"memory_limit": "16Gi", "labels": {"team": "nlp"}}, schema, raise_on_error=True, preprocess=True,
             allow_none_with_default=True)


def test_the_process_worker_ignores_hostile_values_even_past_the_server():
    # Defence in depth: were the server's check bypassed, the worker's filling-in of the template
    # has nowhere to put them. Without `env` in the template the flow run inherits the worker's
    # environment; without `working_dir` it starts in a fresh temporary folder.
    config = asyncio.run(ProcessJobConfiguration.from_template_and_values(template("process"), dict(HOSTILE)))
    assert config.command is None and config.working_dir is None
    assert "PYTHONWARNINGS" not in config.env and "BROWSER" not in config.env and "PYTHONPATH" not in config.env


@pytest.mark.parametrize("kind", ["docker", "kubernetes"])
def test_container_templates_fill_in_fixed_values_whatever_a_run_asks(kind):
    t = template(kind)
    defaults = {name: spec.get("default") for name, spec in t["variables"]["properties"].items()}
    asked = apply_values(t["job_configuration"], {**defaults, **HOSTILE})
    plain = apply_values(t["job_configuration"], defaults)
    assert asked == plain
    text = json.dumps(asked)
    assert "evil" not in text and "kube-system" not in text and "cluster-admin" not in text and MARKER not in text
