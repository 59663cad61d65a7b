"""The plain log file the seeds' operators tail (`BACKUP_LOG_FILE`, default /var/log/backup.log).

dagster.yaml attaches this handler to Dagster's logger, so every run's log lines (steps,
warnings, errors with the failing step) also land in one plain text file, beside the Dagster UI.
A log file that cannot be opened must not stop backups: the handler then says so once on stderr
and writes nothing. The log names the administrators and the errors of every run, so a file it
creates is 0600 and a folder 0700, whatever the umask (under umask 000 they were 0666 and 0777).
"""

from __future__ import annotations

import logging
import sys

from backup_pipeline.files import make_private_dirs, open_private
from backup_pipeline.settings import SettingsError, log_file


class RunLogFileHandler(logging.Handler):
    def __init__(self, level: int | str = logging.INFO) -> None:
        super().__init__(level)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self._inner: logging.FileHandler | None = None
        try:
            self.path = log_file()
        except SettingsError as error:
            print(f"backup_pipeline: no run log: {error}", file=sys.stderr)
            return
        try:
            make_private_dirs(self.path.parent)
            # Created here with its mode: FileHandler's open() would make it 0666 minus umask.
            open_private(self.path, append=True).close()
            self._inner = logging.FileHandler(self.path, encoding="utf-8")
            self._inner.setFormatter(self.formatter)
        except OSError as error:
            print(f"backup_pipeline: cannot write the run log {self.path}: {error}; set "
                  f"BACKUP_LOG_FILE to a writable file", file=sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        if self._inner is not None:
            self._inner.emit(record)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
        super().close()
