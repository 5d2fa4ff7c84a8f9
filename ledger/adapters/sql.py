"""The SQL store of the SQL projection: DuckDB (a file under `LEDGER_DATA_DIR`, the default)
or PostgreSQL (`LEDGER_SQL_URL`). Same tables (`projections.tables`), same writes.

Exactly once: every write is one transaction that checks the stored input offsets are
still the ones the writer started its batch from, replaces the rows the batch changed
and stores the new offsets. A writer killed at any point leaves either all of a batch
or none of it, and resumes from the offsets stored with the rows.

DuckDB lets one process write a file, or several read it, not both at once: the writer
opens the file for each batch only, and readers (`ledger sql`, `ledger export`) open it
read-only between batches, waiting for the lock. A team querying while the ledger
writes uses PostgreSQL.
"""

from __future__ import annotations

import contextlib
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from projections.tables import TABLES, Row, Table

OFFSETS = "ledger_offsets"  # topic, log_partition, next_offset: where the rows stand in the log
TYPES = {
    "duckdb": {
        "text": "VARCHAR", "int": "INTEGER", "bigint": "BIGINT", "float": "DOUBLE",
        "bool": "BOOLEAN", "ts": "TIMESTAMPTZ", "date": "DATE", "json": "JSON",
    },
    "postgres": {
        "text": "TEXT", "int": "INTEGER", "bigint": "BIGINT", "float": "DOUBLE PRECISION",
        "bool": "BOOLEAN", "ts": "TIMESTAMPTZ", "date": "DATE", "json": "JSONB",
    },
}  # fmt: skip
READ_ONLY = ("SELECT", "EXPLAIN")  # statement types `ledger sql` runs
Offsets = dict[tuple[str, int], int]
Hook = Callable[[], None] | None
Answer = tuple[list[str], list[tuple[Any, ...]]]  # a query's columns and rows


class SqlError(Exception):
    """A query or a store that cannot be used, in words for the analyst."""


class WriteRefused(SqlError):
    """`ledger sql` was given a statement that is not a query."""


class StaleOffsets(Exception):
    """The stored offsets moved under the writer (a rebuild, or another writer)."""


@dataclass
class Changes:
    """One batch's writes. A replaced row takes the place of the row with its key (the
    batch's last one wins); an added row is new (one already stored is left alone)."""

    replaced: dict[str, dict[tuple[Any, ...], Row]] = field(default_factory=dict)
    added: dict[str, list[Row]] = field(default_factory=dict)

    def replace(self, table: Table, key: tuple[Any, ...], row: Row) -> None:
        self.replaced.setdefault(table.name, {})[key] = row

    def add(self, table: Table, row: Row) -> None:
        self.added.setdefault(table.name, []).append(row)

    def deletes(self, table: Table) -> list[tuple[Any, ...]]:
        return list(self.replaced.get(table.name, {}))

    def inserts(self, table: Table) -> list[Row]:
        """The rows to insert, one per key."""
        rows = {_key(table, r): r for r in self.added.get(table.name, ())}
        rows.update(self.replaced.get(table.name, {}))
        return list(rows.values())

    def rows(self) -> int:
        return sum(len(r) for r in self.added.values()) + sum(
            len(r) for r in self.replaced.values()
        )


def _key(table: Table, row: Row) -> tuple[Any, ...]:
    return tuple(row[table.names.index(k)] for k in table.key)


def ddl(dialect: str) -> list[str]:
    types = TYPES[dialect]
    out = []
    for t in TABLES:
        columns = ", ".join(f"{c.name} {types[c.type]}" for c in t.columns)
        out.append(
            f"CREATE TABLE IF NOT EXISTS {t.name} ({columns}, PRIMARY KEY ({', '.join(t.key)}))"
        )
    out.append(
        f"CREATE TABLE IF NOT EXISTS {OFFSETS} (topic {types['text']}, log_partition INTEGER, "
        "next_offset BIGINT, PRIMARY KEY (topic, log_partition))"
    )
    out.append("CREATE INDEX IF NOT EXISTS events_by_subject ON events (subject_id)")
    return out


def check_read_only(sql: str) -> None:
    """Refuse anything but a query, naming the statement (DuckDB's parser, which reads
    PostgreSQL's dialect too; the engines refuse writes as well)."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise SqlError(f"cannot parse the query: {exc}") from None
    if not statements:
        raise SqlError("no query given")
    for statement in statements:
        kind = statement.type.name
        if kind not in READ_ONLY:
            words = statement.query.strip().split(None, 1)
            raise WriteRefused(
                f"`ledger sql` runs read-only queries; {words[0].upper() if words else kind} "
                f"is a {kind.lower()} statement. The tables are a projection of the log: "
                "`ledger sql --rebuild` drops and refolds them."
            )


class SqlStore(ABC):
    dialect: str

    @abstractmethod
    def write(
        self, changes: Changes, expected: Offsets, offsets: Offsets, before_commit: Hook = None
    ) -> None:
        """One transaction: check `expected` is what is stored, apply, store `offsets`
        (`before_commit`: called last inside the transaction; crash tests kill there)."""

    @abstractmethod
    def offsets(self) -> Offsets: ...

    @abstractmethod
    def subject_payloads(
        self, subjects: Sequence[str], escalations: bool
    ) -> dict[str, list[bytes]]:
        """The recorded events of each subject, in log order (requests' or customers')."""

    @abstractmethod
    def event_at(self, partition: int, offset: int) -> str | None:
        """The event_id stored from that position of ledger.events."""

    @abstractmethod
    def rebuild(self) -> None:
        """Drop the tables (and offsets) and create them empty."""

    @abstractmethod
    def query(
        self, sql: str, params: Sequence[Any] = ()
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run read-only statements; the last one's columns and rows."""

    @abstractmethod
    def export_parquet(self, directory: Path) -> list[Path]: ...

    def close(self) -> None:  # noqa: B027 - most stores hold nothing open
        pass

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Hold the store open for several calls (one batch of the writer)."""
        yield


# -- DuckDB --------------------------------------------------------------------------------
LOCK_WAIT_S = 30.0


class DuckStore(SqlStore):
    dialect = "duckdb"

    def __init__(self, path: Path, lock_wait_s: float = LOCK_WAIT_S) -> None:
        self.path = path
        self.lock_wait_s = lock_wait_s
        self._held: Any = None
        self._ensured = False

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        with self._connect(read_only=False) as conn:
            self._held = conn
            try:
                yield
            finally:
                self._held = None

    @contextlib.contextmanager
    def _connect(self, read_only: bool) -> Iterator[Any]:
        import duckdb

        if self._held is not None and not read_only:
            yield self._held
            return
        if read_only and not self.path.exists():
            raise SqlError(
                f"no SQL tables at {self.path}: they are written by the ledger's SQL writer "
                "(`ledger up`, `ledger demo`), or by `ledger sql --rebuild`"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                conn = duckdb.connect(str(self.path), read_only=read_only)
                break
            except duckdb.IOException as exc:  # the other side holds the file: wait
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise SqlError(f"cannot open {self.path}: {exc}") from None
                time.sleep(0.05)
        try:
            yield conn
        finally:
            conn.close()

    def _ensure(self, conn: Any) -> None:
        if self._ensured:
            return
        for statement in ddl(self.dialect):
            conn.execute(statement)
        self._ensured = True

    def write(
        self, changes: Changes, expected: Offsets, offsets: Offsets, before_commit: Hook = None
    ) -> None:
        types = TYPES[self.dialect]
        with self._connect(read_only=False) as conn:
            self._ensure(conn)
            conn.execute("BEGIN")
            try:
                if _offsets(conn) != expected:
                    raise StaleOffsets
                for table in TABLES:
                    keys = changes.deletes(table)
                    if keys:
                        kcols = [c for c in table.columns if c.name in table.key]
                        ksel = ", ".join(f"unnest(?::{types[c.type]}[]) AS {c.name}" for c in kcols)
                        match = " AND ".join(f"{table.name}.{k} = d.{k}" for k in table.key)
                        conn.execute(
                            f"DELETE FROM {table.name} USING (SELECT {ksel}) d WHERE {match}",
                            [list(col) for col in zip(*keys, strict=True)],
                        )
                    _duck_insert(conn, table, changes.inserts(table), "INSERT OR IGNORE")
                _store_offsets(conn, offsets, "?")
                if before_commit is not None:
                    before_commit()
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def offsets(self) -> Offsets:
        with self._connect(read_only=False) as conn:
            self._ensure(conn)
            return _offsets(conn)

    def subject_payloads(
        self, subjects: Sequence[str], escalations: bool
    ) -> dict[str, list[bytes]]:
        with self._connect(read_only=False) as conn:
            rows = conn.execute(
                "SELECT subject_id, payload FROM events WHERE subject_id IN "
                "(SELECT unnest(?::VARCHAR[])) AND (type = 'escalation') = ? "
                "ORDER BY log_partition, log_offset",
                [list(subjects), escalations],
            ).fetchall()
        return _grouped(rows)

    def event_at(self, partition: int, offset: int) -> str | None:
        with self._connect(read_only=False) as conn:
            row = conn.execute(
                "SELECT event_id FROM events WHERE log_partition = ? AND log_offset = ?",
                [partition, offset],
            ).fetchone()
        return row[0] if row else None

    def rebuild(self) -> None:
        with self._connect(read_only=False) as conn:
            for name in (*(t.name for t in TABLES), OFFSETS):
                conn.execute(f"DROP TABLE IF EXISTS {name}")
            self._ensured = False
            self._ensure(conn)

    def query(
        self, sql: str, params: Sequence[Any] = ()
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        import duckdb

        check_read_only(sql)
        with self._connect(read_only=True) as conn:
            try:
                statements = duckdb.extract_statements(sql)
                for statement in statements[:-1]:
                    conn.execute(statement)
                cursor = conn.execute(statements[-1], list(params) or None)
                columns = [d[0] for d in cursor.description or ()]
                return columns, cursor.fetchall()
            except duckdb.Error as exc:
                raise SqlError(str(exc)) from None

    def export_parquet(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        out = []
        with self._connect(read_only=True) as conn:
            for table in TABLES:
                path = directory / f"{table.name}.parquet"
                conn.execute(
                    f"COPY (SELECT * FROM {table.name}) TO '{_quoted(path)}' (FORMAT parquet)"
                )
                out.append(path)
        return out


def _duck_insert(conn: Any, table: Table, rows: list[Row], verb: str) -> None:
    """Rows into a DuckDB table as one statement over column lists (unnest): ~100 times
    faster than executemany."""
    if not rows:
        return
    types = TYPES["duckdb"]
    sel = ", ".join(f"unnest(?::{types[c.type]}[])" for c in table.columns)
    conn.execute(
        f"{verb} INTO {table.name} ({', '.join(table.names)}) SELECT {sel}",
        [list(col) for col in zip(*rows, strict=True)],
    )


def _quoted(path: Path) -> str:
    return str(path.resolve()).replace("'", "''")


def _offsets(conn: Any) -> Offsets:
    rows = conn.execute(f"SELECT topic, log_partition, next_offset FROM {OFFSETS}").fetchall()
    return {(topic, partition): offset for topic, partition, offset in rows}


def _store_offsets(conn: Any, offsets: Offsets, mark: str) -> None:
    conn.execute(f"DELETE FROM {OFFSETS}")
    for (topic, partition), offset in sorted(offsets.items()):
        conn.execute(
            f"INSERT INTO {OFFSETS} (topic, log_partition, next_offset) "
            f"VALUES ({mark}, {mark}, {mark})",
            [topic, partition, offset],
        )


def _grouped(rows: list[tuple[str, Any]]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for subject, payload in rows:
        text = payload if isinstance(payload, str) else _dumps(payload)
        out.setdefault(subject, []).append(text.encode())
    return out


def _dumps(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()


# -- PostgreSQL ----------------------------------------------------------------------------
WRITER_LOCK = 0x1ED6E5  # pg_advisory_xact_lock key: one writer at a time


class PostgresStore(SqlStore):
    dialect = "postgres"

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        try:
            self.conn = psycopg.connect(url, autocommit=False)
        except psycopg.Error as exc:
            raise SqlError(f"cannot connect to PostgreSQL ({_safe(url)}): {exc}") from None
        self._ensured = False

    def close(self) -> None:
        self.conn.close()

    def _ensure(self) -> None:
        if self._ensured:
            return
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [WRITER_LOCK])
            for statement in ddl(self.dialect):
                cur.execute(statement)
        self._ensured = True

    def write(
        self, changes: Changes, expected: Offsets, offsets: Offsets, before_commit: Hook = None
    ) -> None:
        self._ensure()
        types = TYPES[self.dialect]
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [WRITER_LOCK])
            if _offsets(cur) != expected:
                raise StaleOffsets
            for table in TABLES:
                keys = [_pg_row(k) for k in changes.deletes(table)]
                if keys:
                    kcols = [c for c in table.columns if c.name in table.key]
                    arrays = ", ".join(f"%s::{types[c.type]}[]" for c in kcols)
                    match = " AND ".join(f"{table.name}.{k} = d.{k}" for k in table.key)
                    cur.execute(
                        f"DELETE FROM {table.name} USING unnest({arrays}) "
                        f"AS d({', '.join(table.key)}) WHERE {match}",
                        [list(col) for col in zip(*keys, strict=True)],
                    )
                rows = [_pg_row(row) for row in changes.inserts(table)]
                if rows:  # COPY (fast) into a scratch table, then in, skipping stored keys
                    scratch = f"incoming_{table.name}"
                    cur.execute(
                        f"CREATE TEMP TABLE IF NOT EXISTS {scratch} "
                        f"(LIKE {table.name}) ON COMMIT DELETE ROWS"
                    )
                    names = ", ".join(table.names)
                    with cur.copy(f"COPY {scratch} ({names}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                    cur.execute(
                        f"INSERT INTO {table.name} ({names}) SELECT {names} "
                        f"FROM {scratch} ON CONFLICT DO NOTHING"
                    )
            _store_offsets(cur, offsets, "%s")
            if before_commit is not None:
                before_commit()

    def offsets(self) -> Offsets:
        self._ensure()
        with self.conn.transaction(), self.conn.cursor() as cur:
            return _offsets(cur)

    def subject_payloads(
        self, subjects: Sequence[str], escalations: bool
    ) -> dict[str, list[bytes]]:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(
                "SELECT subject_id, payload::text FROM events WHERE subject_id = ANY(%s) "
                "AND (type = 'escalation') = %s ORDER BY log_partition, log_offset",
                [list(subjects), escalations],
            )
            return _grouped(cur.fetchall())

    def event_at(self, partition: int, offset: int) -> str | None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(
                "SELECT event_id FROM events WHERE log_partition = %s AND log_offset = %s",
                [partition, offset],
            )
            row = cur.fetchone()
        return row[0] if row else None

    def rebuild(self) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [WRITER_LOCK])
            for name in (*(t.name for t in TABLES), OFFSETS):
                cur.execute(f"DROP TABLE IF EXISTS {name}")
            for statement in ddl(self.dialect):
                cur.execute(statement)
        self._ensured = True

    def query(
        self, sql: str, params: Sequence[Any] = ()
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        import psycopg

        with contextlib.suppress(SqlError):  # PostgreSQL-only syntax: the server decides
            check_read_only(sql)
        self.conn.read_only = True
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.execute(sql, list(params) or None)
                columns = [d.name for d in cur.description or ()]
                return columns, cur.fetchall() if cur.description else []
        except psycopg.errors.ReadOnlySqlTransaction as exc:
            raise WriteRefused(f"`ledger sql` runs read-only queries: {exc}") from None
        except psycopg.Error as exc:
            raise SqlError(str(exc).strip()) from None
        finally:
            self.conn.read_only = False

    def export_parquet(self, directory: Path) -> list[Path]:
        """Each table through an in-memory DuckDB, which writes the Parquet."""
        import duckdb

        directory.mkdir(parents=True, exist_ok=True)
        duck_types = TYPES["duckdb"]
        out = []
        conn = duckdb.connect()
        try:
            for table in TABLES:
                columns, rows = self.query(f"SELECT * FROM {table.name}")  # noqa: S608
                cols = ", ".join(f"{c.name} {duck_types[c.type]}" for c in table.columns)
                conn.execute(f"CREATE TABLE {table.name} ({cols})")
                json_at = [i for i, c in enumerate(table.columns) if c.type == "json"]
                rows = [  # psycopg hands JSONB back parsed
                    tuple(_dumps(v) if i in json_at and v is not None else v
                          for i, v in enumerate(row))
                    for row in rows
                ]  # fmt: skip
                _duck_insert(conn, table, rows, "INSERT")
                path = directory / f"{table.name}.parquet"
                conn.execute(f"COPY {table.name} TO '{_quoted(path)}' (FORMAT parquet)")
                out.append(path)
        finally:
            conn.close()
        return out


NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")  # \u0000, not \\u0000


def _pg_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """PostgreSQL's text and jsonb cannot hold a NUL character, which an event's text may
    (JSON allows it): it is stored as U+FFFD, or a batch would be refused for ever."""
    return tuple(_pg_value(v) if isinstance(v, str) else v for v in row)


def _pg_value(text: str) -> str:
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if "\\u0000" in text:  # inside JSON text
        text = NUL_ESCAPE.sub(r"\1\\ufffd", text)
    return text


def _safe(url: str) -> str:
    """The URL without its password."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """What a store that is away (PostgreSQL down, DuckDB's file held by a long reader)
    raises: the writer waits and tries again rather than stop the ledger."""
    import duckdb
    import psycopg

    return (SqlError, psycopg.OperationalError, psycopg.InterfaceError, duckdb.IOException)


def open_store(sql_url: str | None, data_dir: Path) -> SqlStore:
    """PostgreSQL when `LEDGER_SQL_URL` is set, else the DuckDB file under the data dir."""
    if sql_url:
        return PostgresStore(sql_url)
    return DuckStore(duckdb_path(data_dir))


def duckdb_path(data_dir: Path) -> Path:
    return data_dir / "ledger.duckdb"
