"""TLS on the gRPC hops as the chart sets it up: the Secret mounted where the env points, the gateway dialling
TLS, probes that speak TLS, and a certificate naming what is dialled. Off by default (plaintext)."""

from tests.k8s.test_chart import RELEASE, by_kind, containers, helm, pod_spec, render  # noqa: F401 - fixture

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
