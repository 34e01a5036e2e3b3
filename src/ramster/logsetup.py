"""Where a node's log lines go and what they look like: one record, one line on stderr.

Three formats, chosen with --log-format or log_format in [node]:

    text    2026-01-02 03:04:05,678 INFO ramster.node: node started: 256 MiB ...
            for a person at a terminal; fields passed as `extra=` follow the
            message as key=value.
    json    {"ts": "2026-01-02T03:04:05.678Z", "level": "info",
             "logger": "ramster.node", "msg": "node started: ...", ...}
            one object per line, for journald (`journalctl -o cat | jq`),
            Loki, or any collector that parses JSON lines.
    logfmt  ts=2026-01-02T03:04:05.678Z level=info logger=ramster.node msg="node started: ..."
            Loki's and Grafana's other line format, still readable by eye.

In json and logfmt the keys ts, level, logger and msg are always there, in
that order; a field given as `log.info(..., extra={"export": "swap"})`
follows under its own name, and a traceback under "exc". Every record stays
one line (newlines inside a message or a traceback are escaped), so a
collector never splits a record or joins two.

The level is the root logger's, so the libraries' records (asyncio's) are
filtered the same way; set_level() changes it while the node runs (a SIGHUP
reload or `ramster ctl` calls it) and the handler stays as configured.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

FORMATS = ("text", "json", "logfmt")
LEVELS = ("debug", "info", "warning", "error", "critical")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# what every LogRecord carries; anything else on a record came from `extra=`
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def extra_fields(record: logging.LogRecord) -> dict:
    """The fields a caller added to this record with `extra=`."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    t = datetime.fromtimestamp(record.created, timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _fields(fmt: logging.Formatter, record: logging.LogRecord) -> dict:
    out = {"ts": _timestamp(record), "level": record.levelname.lower(), "logger": record.name,
           "msg": record.getMessage()}
    for k, v in extra_fields(record).items():
        out.setdefault(k, v)
    if record.exc_info:
        out["exc"] = fmt.formatException(record.exc_info)
    elif record.exc_text:
        out["exc"] = record.exc_text
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # json.dumps escapes newlines, so the object is one line; values it cannot encode become str()
        return json.dumps(_fields(self, record), ensure_ascii=False, default=str)


def logfmt_value(value) -> str:
    """A logfmt value: bare when it can be, else double-quoted with \\, " and newlines escaped."""
    if value is None:
        s = ""
    elif isinstance(value, bool):
        s = "true" if value else "false"
    else:
        s = str(value)
    if s and not any(c in s for c in ' ="\\') and s.isprintable():
        return s
    s = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{s}"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={logfmt_value(v)}" for k, v in _fields(self, record).items())


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = extra_fields(record)
        if extra:
            tail = " ".join(f"{k}={logfmt_value(v)}" for k, v in extra.items())
            head, nl, rest = line.partition("\n")  # after the message, before any traceback
            line = f"{head} {tail}{nl}{rest}"
        return line


_FORMATTERS = {"text": TextFormatter, "json": JsonFormatter, "logfmt": LogfmtFormatter}


def _level(name: str) -> int:
    if not isinstance(name, str) or name.lower() not in LEVELS:
        raise ValueError(f"unknown log level {name!r}; choose one of: {', '.join(LEVELS)}")
    return getattr(logging, name.upper())


def configure(format: str = "text", level: str = "info", stream=None) -> None:
    """Send every record at `level` or above to `stream` (stderr) as `format` lines,
    replacing whatever handlers the root logger had."""
    if format not in _FORMATTERS:
        raise ValueError(f"unknown log format {format!r}; choose one of: {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(_FORMATTERS[format]())
    root = logging.getLogger()
    for h in root.handlers[:]:
        root.removeHandler(h)
        h.close()
    root.addHandler(handler)
    root.setLevel(_level(level))


def level() -> str:
    """The level now in force, as a name from LEVELS."""
    return logging.getLevelName(logging.getLogger().level).lower()


def set_level(name: str) -> str:
    """Change the level of every logger that has none of its own; returns the previous level's name.
    ValueError (one line) for a name not in LEVELS."""
    new = _level(name)
    old = level()
    logging.getLogger().setLevel(new)
    return old
