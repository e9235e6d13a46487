"""TLS on the gRPC hops as the chart sets it up: the Secret mounted where the env points, the gateway dialling
TLS, probes that speak TLS, and a certificate naming what is dialled. Off by default (plaintext)."""

from tests.k8s.test_chart import (  # noqa: F401 - fixture
    CHART,
    NAMESPACE,
    RELEASE,
    by_kind,
    containers,
    helm,
    pod_spec,
    render,
    run_helm,
)

TLS_DIR = "/etc/glmvoice/tls"


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_tls_is_off_by_default(helm):  # noqa: F811
    docs = render(helm)
    for _, container in containers(docs):
        assert not {"TLS_CERT_FILE", "ORCHESTRATOR_TLS"} & set(env_of(container))
    orchestrator = by_kind(docs, "Deployment")[f"{RELEASE}-glmvoice-orchestrator"]
    assert "grpc" in pod_spec(orchestrator)["containers"][0]["readinessProbe"]
    assert not by_kind(docs, "Certificate")


def test_mtls_values_mount_the_secret_where_the_env_points(helm):  # noqa: F811
    docs = render(helm, "tls-values.yaml")
    deployments = by_kind(docs, "Deployment")
    for component, expected in (("orchestrator", {"TLS_CLIENT_AUTH": "true"}), ("gateway", {"ORCHESTRATOR_TLS": "true"})):
        spec = pod_spec(deployments[f"{RELEASE}-glmvoice-{component}"])
        container = spec["containers"][0]
        env = env_of(container)
        assert expected.items() <= env.items(), component
        assert {env[k] for k in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE")} == {
            f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key", f"{TLS_DIR}/ca.crt"}
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == TLS_DIR]
        assert mount["readOnly"] is True
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == "glmvoice-internal-tls"
    orchestrator = pod_spec(deployments[f"{RELEASE}-glmvoice-orchestrator"])["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # the kubelet's gRPC probe has no TLS
        assert orchestrator[probe]["exec"]["command"] == ["python", "-m", "services.orchestrator.healthcheck"]
    (certificate,) = by_kind(docs, "Certificate").values()
    assert certificate["spec"]["secretName"] == "glmvoice-internal-tls"
    assert {f"{RELEASE}-glmvoice-orchestrator", "localhost"} <= set(certificate["spec"]["dnsNames"])
    assert {"server auth", "client auth"} <= set(certificate["spec"]["usages"])
    assert certificate["spec"]["issuerRef"] == {"name": "glmvoice-internal-ca", "kind": "ClusterIssuer",
                                                "group": "cert-manager.io"}


def test_tls_values_carry_tls_to_every_triton_hop(helm):  # noqa: F811
    """Triton serves the Secret's identity (mTLS with tls.clientAuth); the orchestrator and the promoter's Jobs dial
    it over TLS and, since they dial pod IPs, check one name the certificate carries (TRITON_TLS_SERVER_NAME)."""
    jobs = ("jobs.promote.enabled=true", "jobs.promote.candidate=run-1", "jobs.rollback.enabled=true",
            "jobs.rollback.runId=undo-1")
    docs = render(helm, "tls-values.yaml", *jobs)
    (certificate,) = by_kind(docs, "Certificate").values()
    names = set(certificate["spec"]["dnsNames"])
    server_name = f"{RELEASE}-glmvoice-triton.{NAMESPACE}.svc"
    assert server_name in names
    deployments = by_kind(docs, "Deployment")
    tritons = {name: d for name, d in deployments.items() if name.startswith(f"{RELEASE}-glmvoice-triton-")}
    assert len(tritons) == 3
    services = set(by_kind(docs, "Service"))
    for name, deployment in tritons.items():
        # The model's Service, and its headless -replicas Service (EndpointSlices), under every DNS spelling.
        for service in (name, f"{name}-replicas"):
            assert service in services
            assert {service, f"{service}.{NAMESPACE}", f"{service}.{NAMESPACE}.svc"} <= names, service
        spec = pod_spec(deployment)
        container = spec["containers"][0]
        env = env_of(container)
        assert env["TLS_CLIENT_AUTH"] == "true" and "TRITON_TLS" not in env, name
        assert {env[k] for k in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE")} == {
            f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key", f"{TLS_DIR}/ca.crt"}
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == TLS_DIR]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == "glmvoice-internal-tls"
        # The kubelet's probes stay on the plaintext HTTP port (tritonserver has no TLS there).
        assert container["readinessProbe"]["httpGet"]["port"] == "http"
    orchestrator = env_of(pod_spec(deployments[f"{RELEASE}-glmvoice-orchestrator"])["containers"][0])
    assert orchestrator["TRITON_TLS"] == "true" and orchestrator["TRITON_TLS_SERVER_NAME"] == server_name
    promoter_jobs = [j for j in by_kind(docs, "Job").values()
                     if j["metadata"]["labels"]["app.kubernetes.io/component"] == "promoter"]
    assert len(promoter_jobs) == 2
    for job in promoter_jobs:
        spec = pod_spec(job)
        env = env_of(spec["containers"][0])
        assert env["TRITON_TLS"] == "true" and env["TRITON_TLS_SERVER_NAME"] == server_name
        assert "ORCHESTRATOR_TLS" not in env and "TLS_CLIENT_AUTH" not in env
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == TLS_DIR]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert env["TLS_CA_FILE"] == f"{TLS_DIR}/ca.crt" and volume["secret"]["secretName"] == "glmvoice-internal-tls"


def test_without_tls_triton_and_the_promoter_stay_plaintext(helm):  # noqa: F811
    docs = render(helm, None, "jobs.promote.enabled=true", "jobs.promote.candidate=run-1")
    for workload in [*by_kind(docs, "Deployment").values(), *by_kind(docs, "Job").values()]:
        spec = pod_spec(workload)
        assert not {"TRITON_TLS", "TLS_CERT_FILE"} & set(env_of(spec["containers"][0])), workload["metadata"]["name"]
        assert not [v for v in spec.get("volumes", []) if v["name"] == "grpc-tls"]


# --- Redis over TLS (redis.tls.enabled, on in tls-values.yaml) ---------------------------------------------------

REDIS = f"{RELEASE}-glmvoice-redis"
PROMOTER_JOBS = ("jobs.promote.enabled=true", "jobs.promote.candidate=run-1", "jobs.rollback.enabled=true",
                 "jobs.rollback.runId=undo-1")


def _redis_conf(docs: list[dict]) -> list[str]:
    return [line.strip() for line in by_kind(docs, "ConfigMap")[REDIS]["data"]["redis.conf"].splitlines()]


def _redis_clients(docs: list[dict]) -> list[tuple[str, dict]]:
    """(name, pod spec) of the orchestrator and the promote / rollback Jobs: every Redis client of the chart."""
    jobs = [j for j in by_kind(docs, "Job").values() if j["metadata"]["labels"]["app.kubernetes.io/component"] == "promoter"]
    assert len(jobs) == 2
    orchestrator = by_kind(docs, "Deployment")[f"{RELEASE}-glmvoice-orchestrator"]
    return [(w["metadata"]["name"], pod_spec(w)) for w in (orchestrator, *jobs)]


def test_redis_tls_serves_only_tls_with_the_secret_and_its_clients_dial_tls(helm):  # noqa: F811
    docs = render(helm, "tls-values.yaml", *PROMOTER_JOBS)
    conf = _redis_conf(docs)
    assert "port 0" in conf and "tls-port 6379" in conf and "port 6379" not in conf
    assert {f"tls-cert-file {TLS_DIR}/tls.crt", f"tls-key-file {TLS_DIR}/tls.key", f"tls-ca-cert-file {TLS_DIR}/ca.crt",
            "tls-auth-clients yes"} <= set(conf)  # tls.clientAuth: true
    spec = pod_spec(by_kind(docs, "StatefulSet")[REDIS])
    container = spec["containers"][0]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == TLS_DIR]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert mount["readOnly"] is True and volume["secret"]["secretName"] == "glmvoice-internal-tls"
    # redis-server reads the key as uid 999: the Secret's files are group-readable and the pod's fsGroup is 999.
    assert volume["secret"]["defaultMode"] == 0o440 and spec["securityContext"]["fsGroup"] == 999
    for probe in ("startupProbe", "readinessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["redis-cli", "--tls"] and command[-1] == "ping", probe
        assert {("--cacert", f"{TLS_DIR}/ca.crt"), ("--cert", f"{TLS_DIR}/tls.crt"), ("--key", f"{TLS_DIR}/tls.key"),
                ("-p", "6379")} <= set(zip(command, command[1:])), probe
    (certificate,) = by_kind(docs, "Certificate").values()
    assert {REDIS, f"{REDIS}.{NAMESPACE}", f"{REDIS}.{NAMESPACE}.svc"} <= set(certificate["spec"]["dnsNames"])
    for name, client in _redis_clients(docs):
        container = client["containers"][0]
        env = env_of(container)
        assert env["REDIS_TLS"] == "true" and env["REDIS_CA_FILE"] == f"{TLS_DIR}/ca.crt", name
        # The client certificate Redis requires (tls-auth-clients yes) is the pod's, from the same mount.
        assert (env["TLS_CERT_FILE"], env["TLS_KEY_FILE"]) == (f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key"), name
        assert [m for m in container["volumeMounts"] if m["mountPath"] == TLS_DIR], name


def test_redis_tls_without_client_auth_does_not_require_client_certificates(helm):  # noqa: F811
    assert "tls-auth-clients no" in _redis_conf(render(helm, "tls-values.yaml", "tls.clientAuth=false"))


def test_redis_stays_plaintext_unless_redis_tls_is_enabled(helm):  # noqa: F811
    """tls.enabled alone (the gRPC hops) leaves Redis as it was: plaintext port, plain probes, no REDIS_TLS."""
    docs = render(helm, "tls-values.yaml", "redis.tls.enabled=false", *PROMOTER_JOBS)
    conf = _redis_conf(docs)
    assert "port 6379" in conf and not [line for line in conf if line.startswith("tls-")]
    container = pod_spec(by_kind(docs, "StatefulSet")[REDIS])["containers"][0]
    assert container["readinessProbe"]["exec"]["command"] == ["redis-cli", "-p", "6379", "ping"]
    assert not [m for m in container["volumeMounts"] if m["mountPath"] == TLS_DIR]
    (certificate,) = by_kind(docs, "Certificate").values()
    assert REDIS not in certificate["spec"]["dnsNames"]
    for name, client in _redis_clients(docs):
        assert not {"REDIS_TLS", "REDIS_CA_FILE"} & set(env_of(client["containers"][0])), name


def test_redis_tls_with_an_external_redis_and_without_tls_enabled(helm):  # noqa: F811
    docs = render(helm, "tls-values.yaml", "redis.enabled=false", "redis.external.addr=redis.example:6380",
                  *PROMOTER_JOBS)
    assert REDIS not in by_kind(docs, "StatefulSet")
    (certificate,) = by_kind(docs, "Certificate").values()
    assert REDIS not in certificate["spec"]["dnsNames"]
    for name, client in _redis_clients(docs):
        env = env_of(client["containers"][0])
        assert env["REDIS_TLS"] == "true" and env["REDIS_CA_FILE"] == f"{TLS_DIR}/ca.crt", name
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--set", "redis.tls.enabled=true", check=False)
    assert proc.returncode != 0 and "redis.tls.enabled needs tls.enabled" in proc.stderr
