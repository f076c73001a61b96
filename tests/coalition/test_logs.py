"""JSON log lines (coalition.logs): one object per line, control characters escaped, request
fields bound to every record of the request, the level from COALITION_LOG_LEVEL."""

from __future__ import annotations

import io
import json
import logging

import pytest

from coalition import logs


def _logger(stream: io.StringIO) -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger


def test_a_record_is_one_json_line_whatever_its_text_holds() -> None:
    out = io.StringIO()
    _logger(out).warning("path %s", "/x\x00\nERROR - FORGED", extra={"status": 401})
    [line] = out.getvalue().splitlines()
    doc = json.loads(line)
    assert doc["message"] == "path /x\x00\nERROR - FORGED" and doc["status"] == 401
    assert doc["level"] == "warning" and "\x00" not in line


def test_request_fields_reach_every_record_of_the_request_and_no_other() -> None:
    out = io.StringIO()
    logger = _logger(out)
    with logs.request_fields(request_id="req_abc", method="GET"):
        logger.info("first")
        logs.bind(key_id="key_1", partner_id=None)
        logger.info("second")
    logger.info("outside")
    first, second, outside = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["request_id"] == second["request_id"] == "req_abc"
    assert "key_id" not in first and second["key_id"] == "key_1" and "partner_id" not in second
    assert "request_id" not in outside


def test_an_exception_is_kept_inside_its_line() -> None:
    out = io.StringIO()
    try:
        raise ValueError("boom\nline two")
    except ValueError:
        _logger(out).exception("failed")
    [line] = out.getvalue().splitlines()
    doc = json.loads(line)
    assert doc["exc_type"] == "ValueError" and "line two" in doc["exc"]


def test_the_level_comes_from_coalition_log_level() -> None:
    assert logs.log_level({}) == "INFO"
    assert logs.log_level({"COALITION_LOG_LEVEL": "warning"}) == "WARNING"
    with pytest.raises(ValueError, match="COALITION_LOG_LEVEL"):
        logs.log_level({"COALITION_LOG_LEVEL": "LOUD"})
    config = logs.logging_config("ERROR")
    assert config["root"]["level"] == "ERROR"
    assert config["loggers"]["uvicorn.access"]["propagate"] is False
