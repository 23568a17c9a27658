"""Service output: the parent's sink (terminal, rotating files, tail) and the log-file reader."""

from devmesh.logs.reader import LogRecord, follow, format_record, read_records, services_in
from devmesh.logs.writer import LogSink, want_color

__all__ = [
    "LogRecord",
    "LogSink",
    "follow",
    "format_record",
    "read_records",
    "services_in",
    "want_color",
]
