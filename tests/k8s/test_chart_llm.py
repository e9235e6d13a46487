"""The chart's LM settings: weight-only quantization reaches the llm pods, and only them."""

from tests.k8s.test_chart import (  # noqa: F401 - helm is a fixture
    CHART,
    RELEASE,
    by_kind,
    helm,
    pod_spec,
    render,
    run_helm,
)

LLM = f"{RELEASE}-glmvoice-triton-llm"


def env_of(docs, deployment: str) -> dict[str, str]:
    container = pod_spec(by_kind(docs, "Deployment")[deployment])["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_quantization_is_set_on_the_llm_pods_only(helm):
    docs = render(helm, None, "triton.models.llm.quantization=int4-g128")
    assert env_of(docs, LLM)["GLMVOICE_LLM_QUANTIZATION"] == "int4-g128"
    for model in ("speech-tokenizer", "speech-decoder"):
        assert "GLMVOICE_LLM_QUANTIZATION" not in env_of(docs, f"{RELEASE}-glmvoice-triton-{model}")
    assert "GLMVOICE_LLM_QUANTIZATION" not in env_of(render(helm), LLM)


def test_bad_quantization_values_are_refused(helm):
    for setting, message in (("triton.models.llm.quantization=int3", "quantization"),
                             ("triton.models.speech_decoder.quantization=int8", "only the llm model")):
        proc = run_helm(helm, "template", RELEASE, str(CHART), "--set", setting, check=False)
        assert proc.returncode != 0 and message in proc.stderr, setting


def test_tensor_parallel_sets_the_ranks_and_needs_a_gpu_per_rank(helm):
    docs = render(helm, None, "triton.models.llm.tensorParallel=2", "triton.models.llm.gpu=2")
    assert env_of(docs, LLM)["GLMVOICE_LLM_TENSOR_PARALLEL"] == "2"
    container = pod_spec(by_kind(docs, "Deployment")[LLM])["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert "GLMVOICE_LLM_TENSOR_PARALLEL" not in env_of(render(helm), LLM)
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--set", "triton.models.llm.tensorParallel=2",
                    "--set", "triton.models.llm.gpu=1", check=False)
    assert proc.returncode != 0 and "one GPU per rank" in proc.stderr
