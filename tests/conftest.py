"""Fixtures are grouped by network in tests/fixtures/; each module is a pytest plugin."""

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
