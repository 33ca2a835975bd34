"""The library logger follows logging conventions; the CLI is what shows its records."""

from __future__ import annotations

import logging

import lmforge  # noqa: F401  (importing lmforge installs its NullHandler)
from lmforge.cli import configure_logging


def test_library_logger_has_a_null_handler_and_propagates():
    logger = logging.getLogger("lmforge")
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)
    assert not any(type(h) is logging.StreamHandler for h in logger.handlers)
    assert logger.propagate


def test_a_record_reaches_the_applications_root_handler(caplog):
    with caplog.at_level(logging.WARNING, logger="lmforge"):  # other tests may have raised its level
        logging.getLogger("lmforge.some_module").warning("newly initialized: classifier.weight")
    assert [r.name for r in caplog.records] == ["lmforge.some_module"]


def test_cli_adds_one_stderr_handler_only_where_logging_is_unconfigured(monkeypatch):
    logger = logging.getLogger("lmforge")
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # an application that configured nothing
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    configure_logging()
    configure_logging()  # main() runs once per call: idempotent
    added = [h for h in logger.handlers if type(h) is logging.StreamHandler]
    assert len(added) == 1 and logger.level == logging.INFO

    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    monkeypatch.setattr(root, "handlers", [logging.NullHandler()])  # the application configured logging
    configure_logging()
    assert logger.handlers == [] and logger.level == logging.NOTSET
