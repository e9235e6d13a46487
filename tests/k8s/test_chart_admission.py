"""The chart's admission policy for Jobs and the model repository's write access, from the rendered chart.

No API server here serves ValidatingAdmissionPolicy (the test one is 1.20), so the policy's CEL is evaluated
with cel-python against the chart's own Jobs and forged ones, as the API server would evaluate it for an
`object` and a `request`; the 1.33 schema validation (test_chart.py) checks the objects' shape.
"""

import copy

import celpy
import pytest
import yaml

from tests.k8s.test_chart import (  # noqa: F401 - helm is a fixture
    CHART,
    NAMESPACE,
    RELEASE,
    by_kind,
    helm,
    pod_spec,
    render,
    run_helm,
    template,
    workloads,
)

JOBS = ("jobs.train.enabled=true", "jobs.train.runId=r1", "jobs.evaluate.enabled=true", "jobs.evaluate.candidate=r1",
        "jobs.promote.enabled=true", "jobs.promote.candidate=r1", "jobs.rollback.enabled=true", "jobs.rollback.runId=b1")
SA = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-glmvoice-"
SUBMITTER, PROMOTER, STRANGER = SA + "job-submitter", SA + "promoter", SA + "default"
REPOSITORY_CLAIM = f"{RELEASE}-glmvoice-model-repository"


@pytest.fixture(scope="module")
def docs(helm):  # noqa: F811
    return render(helm, None, *JOBS)


@pytest.fixture(scope="module")
def jobs(docs) -> dict:
    return {j["metadata"]["labels"]["glmvoice.io/job"]: j for j in by_kind(docs, "Job").values()}


def admit(policy: dict, job: dict, username: str, groups: tuple[str, ...] = ()) -> list[str]:
    """The messages of the validations `job` fails when `username` creates it (empty: admitted)."""
    env = celpy.Environment()

    def evaluate(expression: str, activation: dict):
        return env.program(env.compile(expression)).evaluate(activation)

    activation = {"object": celpy.json_to_cel(job),
                  "request": celpy.json_to_cel({"userInfo": {"username": username, "groups": list(groups)}})}
    variables = celpy.celtypes.MapType()
    for variable in policy["spec"]["variables"]:  # in order: later ones read earlier ones
        activation["variables"] = variables
        variables[celpy.celtypes.StringType(variable["name"])] = evaluate(variable["expression"], activation)
    activation["variables"] = variables
    failed = []
    for validation in policy["spec"]["validations"]:
        if not bool(evaluate(validation["expression"], activation)):
            failed.append(validation["message"])
    return failed


@pytest.fixture(scope="module")
def policy(docs) -> dict:
    (policy,) = by_kind(docs, "ValidatingAdmissionPolicy").values()
    return policy


def test_policy_binds_to_jobs_in_the_release_namespace(docs, policy):
    (binding,) = by_kind(docs, "ValidatingAdmissionPolicyBinding").values()
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": NAMESPACE}
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert policy["spec"]["matchConstraints"]["resourceRules"] == [
        {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["jobs"]}]
    claims = next(v["expression"] for v in policy["spec"]["variables"] if v["name"] == "claimsRelease")
    assert "'glmvoice.io/job' in l" in claims and f"l['app.kubernetes.io/instance'] == '{RELEASE}'" in claims


def test_policy_is_rendered_only_where_the_cluster_serves_it(helm):  # noqa: F811
    def kinds(*args: str) -> set[str]:
        out = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args).stdout
        return {d["kind"] for d in yaml.safe_load_all(out) if d}

    api = ("--api-versions", "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy")
    assert "ValidatingAdmissionPolicy" in kinds("--kube-version", "1.33.0", *api)
    assert "ValidatingAdmissionPolicy" not in kinds("--kube-version", "1.28.0", *api)  # 1.28 serves no v1
    assert "ValidatingAdmissionPolicy" not in kinds("--kube-version", "1.33.0")  # the API is not served
    assert "ValidatingAdmissionPolicy" not in kinds("--kube-version", "1.33.0", *api, "--set",
                                                    "admissionPolicy.enabled=false")
    assert "ValidatingAdmissionPolicy" not in {d["kind"] for d in yaml.safe_load_all(template(helm, kube="1.28.0")) if d}


def test_the_charts_own_jobs_are_admitted_from_their_accounts(policy, jobs):
    assert admit(policy, jobs["train"], SUBMITTER) == []
    assert admit(policy, jobs["evaluate"], SUBMITTER) == []
    assert admit(policy, jobs["promote"], PROMOTER) == []
    assert admit(policy, jobs["rollback"], "alice", ("system:masters",)) == []  # an operator (values)


def test_a_forged_promoter_label_is_refused(policy, jobs):
    """A Job any other account writes with the labels the Redis and Triton NetworkPolicies trust."""
    forged = copy.deepcopy(jobs["train"])
    for meta in (forged["metadata"], forged["spec"]["template"]["metadata"]):
        meta["labels"].update({"app.kubernetes.io/component": "promoter", "glmvoice.io/job": "promote"})
    assert admit(policy, forged, STRANGER)
    assert admit(policy, jobs["promote"], STRANGER)
    only_pod = copy.deepcopy(jobs["train"])  # labels on the pod template alone still count
    only_pod["metadata"]["labels"] = {}
    assert admit(policy, only_pod, STRANGER)
    assert any("never promote" in m for m in admit(policy, forged, SUBMITTER))
    unrelated = {"metadata": {"labels": {"app": "other"}}, "spec": {"template": {"spec": {"containers": []}}}}
    assert admit(policy, unrelated, STRANGER) == []  # other teams' Jobs are not this policy's business


@pytest.mark.parametrize("change", ["service account", "secret volume", "model repository", "secret env",
                                    "projected token"])
def test_the_job_submitters_jobs_run_without_secrets_or_the_repository(policy, jobs, change):
    job = copy.deepcopy(jobs["train"])
    spec = job["spec"]["template"]["spec"]
    container = spec["containers"][0]
    if change == "service account":
        spec["serviceAccountName"] = f"{RELEASE}-glmvoice-promoter"
    elif change == "secret volume":
        spec["volumes"].append({"name": "s", "secret": {"secretName": f"{RELEASE}-glmvoice-redis"}})
    elif change == "model repository":
        spec["volumes"].append({"name": "m", "persistentVolumeClaim": {"claimName": REPOSITORY_CLAIM}})
    elif change == "secret env":
        container["env"].append({"name": "P", "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}})
    else:
        spec["volumes"].append({"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}})
    assert admit(policy, job, SUBMITTER), change


def test_only_the_promoter_mounts_the_model_repository_writable(docs):
    promoter_sa = f"{RELEASE}-glmvoice-promoter"
    writers = set()
    for workload in workloads(docs):
        spec = pod_spec(workload)
        claims = {v["name"] for v in spec.get("volumes", [])
                  if v.get("persistentVolumeClaim", {}).get("claimName") == REPOSITORY_CLAIM}
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["name"] in claims and not mount.get("readOnly", False):
                    writers.add((workload["metadata"]["name"], spec["serviceAccountName"]))
    assert writers and {sa for _, sa in writers} == {promoter_sa}, writers
