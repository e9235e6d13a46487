"""Fixtures are grouped by network in tests/fixtures/; each module is a pytest plugin."""

# Imported at start: hypothesis's pytest plugin otherwise imports it in the terminal summary, where CPython
# 3.11's compiler has failed with "AST constructor recursion depth mismatch" after a run of threaded servers.
import hypothesis  # noqa: F401

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.speech_tokenizer",
    "tests.fixtures.llm",
    "tests.fixtures.speech_decoder",
    "tests.fixtures.servers",
    "tests.fixtures.kube",
    "tests.fixtures.redis",
    "tests.fixtures.training",
]
