"""Run a real nx-27017 (MongoDB wire protocol on SQLite) server as a child process.

No MongoDB server can be installed on the development machines, and nx-27017 is the closest stand-in that
speaks the wire protocol to an unmodified pymongo, including change streams. Every instance gets its own data
directory and its own pid file: with ``--db FILE`` same-named collections of different databases share one
table, and two instances sharing the default pid file refuse to start.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pymongo import MongoClient

from localdev.standins.child import ChildProcess


class NxServer(ChildProcess):
    """One nx-27017 server process with its own data directory; stays on the same port across restarts."""

    label = "nx"

    @property
    def data_dir(self) -> Path:
        return self.work_dir

    @property
    def uri(self) -> str:
        """Connection string for a direct (non-replica-set) connection."""
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    @property
    def pid_file(self) -> Path:
        """nx-27017 writes its pid here and refuses to start while the recorded process is alive."""
        return self.work_dir / "nx.pid"

    @property
    def log_file(self) -> Path:
        """nx-27017's own log."""
        return self.work_dir / "nx.log"

    def kill(self) -> None:
        """SIGKILL the process, like a crash; the data directory keeps whatever SQLite committed."""
        super().kill()
        # nx-27017 cannot remove its pid file when killed; the process is reaped, so the file is stale.
        self.pid_file.unlink(missing_ok=True)

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "nx_27017.nx_27017",
            "--data-dir",
            str(self.work_dir),
            "--host",
            self.host,
            "-p",
            str(self.port),
            "--pid-file",
            str(self.pid_file),
            "--log-file",
            str(self.log_file),
        ]

    def _probe(self) -> None:
        with MongoClient[dict[str, object]](self.uri, serverSelectionTimeoutMS=250, connectTimeoutMS=250) as client:
            client.admin.command("ping")
