"""Keys never reach the logs: the JSON log handler redacts credentials whichever library logged them."""

import io
import json
import logging
import logging.config

import uvicorn.config

from glmvoice.telemetry import REDACTED, configure_logging


def test_access_log_lines_and_messages_lose_their_credentials(capsys):
    # The worst case the process can be in: uvicorn's default log config applied (as any uvicorn.run without
    # log_config=None does): its loggers get their own stdout/stderr handlers and stop propagating.
    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)
    configure_logging("INFO")
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)
    # uvicorn's access log format, with the path as an argument.
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET",
                                             "/v1/realtime?model=m&api_key=sk-live-123", "1.1", 101)
    logging.getLogger("glmvoice.test").warning("upstream refused authorization: Bearer sk-live-456")
    logging.getLogger("glmvoice.test").info("redis url redis://:pw@h?password=hunter2 and nothing else")
    lines = [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]
    text = "\n".join(lines)
    for secret in ("sk-live-123", "sk-live-456", "hunter2"):
        assert secret not in text
    assert text.count(REDACTED) == 3
    assert "/v1/realtime?model=m&api_key=" in lines[0]  # the rest of the line is kept
    printed = capsys.readouterr()
    assert "sk-live-123" not in printed.out + printed.err  # nothing went out through uvicorn's own handlers
