"""Redis in the chart: a password every client must send (generated into a Secret), append-only file on."""

from tests.k8s.test_chart import RELEASE, by_kind, helm, render  # noqa: F401 - helm is a fixture

SECRET = f"{RELEASE}-glmvoice-redis-auth"


def _env(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def _password_ref(env: dict) -> tuple[str, str]:
    ref = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def test_redis_requires_the_generated_password_and_its_clients_send_it(helm):  # noqa: F811
    docs = render(helm)
    [secret] = [d for d in by_kind(docs, "Secret").values() if d["metadata"]["name"] == SECRET]
    assert len(secret["data"]["password"]) >= 40  # base64 of 32 random characters
    [redis] = by_kind(docs, "StatefulSet").values()
    container = redis["spec"]["template"]["spec"]["containers"][0]
    assert "--requirepass" in container["command"][-1] and _password_ref(_env(container)) == (SECRET, "password")
    assert "REDISCLI_AUTH" in _env(container)  # the probes authenticate too
    config = by_kind(docs, "ConfigMap")[f"{RELEASE}-glmvoice-redis"]["data"]["redis.conf"]
    assert "appendonly yes" in config and "appendfsync everysec" in config
    orchestrator = by_kind(docs, "Deployment")[f"{RELEASE}-glmvoice-orchestrator"]
    assert _password_ref(_env(orchestrator["spec"]["template"]["spec"]["containers"][0])) == (SECRET, "password")


def test_promote_job_sends_the_password_and_an_existing_secret_is_used(helm):  # noqa: F811
    docs = render(helm, None, "jobs.promote.enabled=true", "jobs.promote.candidate=r1",
                  "redis.auth.existingSecret=ops-redis", "redis.auth.existingSecretKey=pw")
    assert SECRET not in by_kind(docs, "Secret")
    [job] = [j for j in by_kind(docs, "Job").values() if "promote" in j["metadata"]["name"]]
    assert _password_ref(_env(job["spec"]["template"]["spec"]["containers"][0])) == ("ops-redis", "pw")


def test_auth_can_be_turned_off(helm):  # noqa: F811
    docs = render(helm, None, "redis.auth.enabled=false")
    assert SECRET not in by_kind(docs, "Secret")
    [redis] = by_kind(docs, "StatefulSet").values()
    assert redis["spec"]["template"]["spec"]["containers"][0]["command"] == ["redis-server", "/etc/redis/redis.conf"]
