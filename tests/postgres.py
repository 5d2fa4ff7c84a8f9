"""A throwaway PostgreSQL cluster for tests: Debian's `initdb` and `pg_ctl` in a temporary
directory, on a free port, run as the `postgres` user when the tests run as root.

Never a mock and never skipped: without the server binaries the tests that need it fail,
saying what to install.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ledger.adapters.broker import free_port

BIN_GLOB = "/usr/lib/postgresql/*/bin"


class PostgresMissing(RuntimeError):
    pass


def server_bin() -> Path:
    """The newest Debian PostgreSQL server binaries, or PATH's."""
    candidates = sorted(glob.glob(BIN_GLOB), key=lambda p: int(Path(p).parent.name))
    for directory in reversed(candidates):
        if (Path(directory) / "initdb").exists():
            return Path(directory)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PostgresMissing(
        "the PostgreSQL tests need a PostgreSQL server (initdb, pg_ctl): "
        "`apt-get install postgresql-15` (Debian) puts them under /usr/lib/postgresql/15/bin"
    )


def _run(command: list[str]) -> None:
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}{done.stderr}")


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """Start a cluster in a new temporary directory (one the `postgres` user can reach,
    unlike pytest's private ones); yield its URL; stop it and remove the directory."""
    bin_dir = server_bin()
    base = Path(tempfile.mkdtemp(prefix="ledger-pg-"))
    data = base / "pgdata"
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to `postgres`
        shutil.chown(base, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    try:
        _run([*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", "ledger",
              "--auth=trust", "-E", "UTF8", "--no-sync"])  # fmt: skip
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
              str(base / "postgres.log"), "-w", "-t", "60", "start"])  # fmt: skip
        try:
            yield f"postgresql://ledger@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                check=False, capture_output=True,
            )  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)


def fresh_database(url: str, name: str) -> str:
    """A new empty database on the cluster; its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + f"/{name}"
