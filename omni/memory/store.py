"""Persistence of all levels: SQLite (WAL) plus feature shards in a data directory, or PostgreSQL (psycopg 3).

`MemoryStore.open(location)`: a directory path gives `<dir>/memory.sqlite3` with shards under `<dir>/shards/`; a
`postgresql://` URL gives the same schema on PostgreSQL, payloads in the database (several server processes or
machines share it). Every write is one transaction; a payload is durable before the row that points at it commits,
so a process killed at any moment leaves a store that opens with every committed record intact (the event still
open in the segmenter, never written, is the one thing lost). The schema carries a version; a store written by
another version is refused with a message naming both versions.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from omni.memory.archive import PayloadArchive, ShardArchive
from omni.memory.codec import (
    array_from_bytes,
    array_to_bytes,
    lane_from_row,
    lane_to_row,
    payload_from_bytes,
    payload_to_bytes,
    utterances_from_json,
    utterances_to_json,
)
from omni.memory.segmenter import ClosedEvent
from omni.memory.types import Event, FramePayload, LaneKeys, Note, Summary, Utterance

SCHEMA_VERSION = 1

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, started {float} NOT NULL,"
    " ended {float})",
    "CREATE TABLE IF NOT EXISTS events (id {id}, user_id TEXT NOT NULL, session_id TEXT NOT NULL,"
    " t_start {float} NOT NULL, t_end {float} NOT NULL, utterances TEXT NOT NULL, text_key {blob},"
    " summary_id BIGINT NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS events_user ON events (user_id, id)",
    "CREATE TABLE IF NOT EXISTS event_lanes (event_id BIGINT NOT NULL, lane TEXT NOT NULL, keys {blob} NOT NULL,"
    " key_times {blob} NOT NULL, mean_key {blob} NOT NULL, payload_ref TEXT NOT NULL, PRIMARY KEY (event_id, lane))",
    "CREATE TABLE IF NOT EXISTS payloads (id {id}, user_id TEXT NOT NULL, data {blob} NOT NULL)",
    "CREATE INDEX IF NOT EXISTS payloads_user ON payloads (user_id)",
    "CREATE TABLE IF NOT EXISTS summaries (id {id}, user_id TEXT NOT NULL, session_id TEXT NOT NULL,"
    " level INTEGER NOT NULL, t_start {float} NOT NULL, t_end {float} NOT NULL, text TEXT NOT NULL,"
    " children TEXT NOT NULL, text_key {blob} NOT NULL, parent_id BIGINT NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS summaries_user ON summaries (user_id, id)",
    "CREATE TABLE IF NOT EXISTS summary_lanes (summary_id BIGINT NOT NULL, lane TEXT NOT NULL, keys {blob} NOT NULL,"
    " key_times {blob} NOT NULL, mean_key {blob} NOT NULL, PRIMARY KEY (summary_id, lane))",
    "CREATE TABLE IF NOT EXISTS notes (id {id}, user_id TEXT NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL,"
    " text_key {blob} NOT NULL, t_first {float} NOT NULL, t_last {float} NOT NULL, session_id TEXT NOT NULL,"
    " count INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS notes_user ON notes (user_id, id)",
]
_TYPES = {
    "sqlite": {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "blob": "BLOB", "float": "REAL"},
    "postgresql": {
        "id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "blob": "BYTEA", "float": "DOUBLE PRECISION"
    },
}
_PG_SCHEMA_LOCK = 0x6F6D6E69  # "omni": serialises schema creation by concurrent server processes


def default_memory_dir() -> Path:
    """`$XDG_DATA_HOME/omni/memory` (default `~/.local/share/omni/memory`): data, not cache, so it is kept."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "omni" / "memory"


class SchemaVersionError(RuntimeError):
    """The store was written by a different schema version than this code reads."""


def store_errors() -> tuple[type[Exception], ...]:
    """What opening or using a store raises when its location cannot be used (unwritable, full, a database server
    that is down or refuses the login): OS and SQLite errors, and psycopg's where psycopg is installed. A malformed
    location (ValueError) or another schema version (SchemaVersionError) is a mistake to report, not this."""
    errors: tuple[type[Exception], ...] = (OSError, sqlite3.Error)
    try:
        import psycopg
    except ImportError:
        return errors
    return (*errors, psycopg.Error)


class MemoryStore:
    """All levels of all users in one database. Thread-safe: one connection per thread."""

    def __init__(self, location: str | Path) -> None:
        loc = str(location)
        self.location = loc
        self._local = threading.local()
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()
        self.archive: PayloadArchive | None
        if loc.startswith(("postgresql://", "postgres://")):
            self.kind = "postgresql"
            self.archive = None
        elif "://" in loc:
            raise ValueError(f"memory store location {loc!r}: expected a directory or a postgresql:// URL")
        else:
            self.kind = "sqlite"
            Path(loc).mkdir(parents=True, exist_ok=True)
            self.archive = ShardArchive(Path(loc))
        self._init_schema()

    @classmethod
    def open(cls, location: str | Path) -> MemoryStore:
        return cls(location)

    # -- connections and transactions -------------------------------------------------------------

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.kind == "sqlite":
                conn = sqlite3.connect(
                    Path(self.location) / "memory.sqlite3", isolation_level=None, check_same_thread=False, timeout=30
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not only a killed process
            else:
                import psycopg

                conn = psycopg.connect(self.location, autocommit=True)
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.kind == "postgresql" else sql

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        conn = self._conn()
        if self.kind == "sqlite":
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
        else:
            with conn.transaction(), conn.cursor() as cur:
                yield cur

    def _exec(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        cur.execute(self._sql(sql), tuple(params))
        return cur

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self._conn()
        cur = conn.cursor()
        try:
            cur.execute(self._sql(sql), tuple(params))
            return list(cur.fetchall())
        finally:
            cur.close()

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()

    def _init_schema(self) -> None:
        with self._tx() as cur:
            if self.kind == "postgresql":
                self._exec(cur, "SELECT pg_advisory_xact_lock(?)", (_PG_SCHEMA_LOCK,))
                has_meta = self._exec(cur, "SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]
            else:
                has_meta = self._exec(cur, "SELECT count(*) FROM sqlite_master WHERE name = 'meta'").fetchone()[0] > 0
            if has_meta:
                row = self._exec(cur, "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                found = int(row[0]) if row else None
                if found != SCHEMA_VERSION:
                    raise SchemaVersionError(
                        f"memory store {self.location} has schema version {found}; this omni reads version "
                        f"{SCHEMA_VERSION}. Export it with the omni that wrote it, or point --memory-dir elsewhere."
                    )
                return
            for stmt in _SCHEMA:
                self._exec(cur, stmt.format(**_TYPES[self.kind]))
            self._exec(cur, "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    # -- writes -----------------------------------------------------------------------------------

    def begin_session(self, user_id: str, session_id: str, started: float) -> None:
        with self._tx() as cur:
            self._exec(
                cur,
                "INSERT INTO sessions (id, user_id, started) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (session_id, user_id, started),
            )

    def end_session(self, session_id: str, ended: float) -> None:
        with self._tx() as cur:
            self._exec(cur, "UPDATE sessions SET ended = ? WHERE id = ?", (ended, session_id))

    def commit_event(self, closed: ClosedEvent) -> Event:
        """Persist a closed event (payloads first, then its rows in one transaction); returns it with its id."""
        ev = closed.event
        refs: dict[str, str] = {}
        if self.archive is not None:
            for lane, payload in closed.payloads.items():
                refs[lane] = self.archive.append(ev.user_id, payload_to_bytes(payload))
        with self._tx() as cur:
            text_key = None if ev.text_key is None else array_to_bytes(ev.text_key)
            ev.id = int(
                self._exec(
                    cur,
                    "INSERT INTO events (user_id, session_id, t_start, t_end, utterances, text_key)"
                    " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                    (ev.user_id, ev.session_id, ev.t_start, ev.t_end, utterances_to_json(ev.utterances), text_key),
                ).fetchone()[0]
            )
            for lane, keys in ev.lanes.items():
                if lane not in refs:
                    data = payload_to_bytes(closed.payloads[lane])
                    pid = self._exec(
                        cur, "INSERT INTO payloads (user_id, data) VALUES (?, ?) RETURNING id", (ev.user_id, data)
                    ).fetchone()[0]
                    refs[lane] = f"db:{int(pid)}"
                self._exec(
                    cur,
                    "INSERT INTO event_lanes (event_id, lane, keys, key_times, mean_key, payload_ref)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (ev.id, lane, *lane_to_row(keys), refs[lane]),
                )
        return ev

    def revise_utterance(
        self, user_id: str, session_id: str, old: Utterance, text: str, key_of: Callable[[str], np.ndarray],
    ) -> Event | None:
        """Replace the committed utterance `old` of a session by the same one saying `text` (a reply cut by the
        listener after it was written), with the event's text key `key_of(transcript)`; the event, or None when no
        event holds `old`."""
        rows = self._query("SELECT id FROM events WHERE user_id = ? AND session_id = ? AND t_start <= ? AND t_end >= ?",
                           (user_id, session_id, old.t_start, old.t_start))
        for ev in self.load_events(user_id, ids=[int(r[0]) for r in rows], with_keys=False):
            if old not in ev.utterances:
                continue
            i = ev.utterances.index(old)
            ev.utterances[i] = Utterance(old.role, text, old.t_start, old.t_end)
            ev.text_key = key_of(ev.transcript())
            with self._tx() as cur:
                self._exec(cur, "UPDATE events SET utterances = ?, text_key = ? WHERE id = ?",
                           (utterances_to_json(ev.utterances), array_to_bytes(ev.text_key), ev.id))
            return ev
        return None

    def commit_summary(self, s: Summary) -> Summary:
        """Persist a summary and point its children at it, in one transaction."""
        with self._tx() as cur:
            s.id = int(
                self._exec(
                    cur,
                    "INSERT INTO summaries (user_id, session_id, level, t_start, t_end, text, children, text_key)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (s.user_id, s.session_id, s.level, s.t_start, s.t_end, s.text,
                     ",".join(map(str, s.children)), array_to_bytes(s.text_key)),
                ).fetchone()[0]
            )
            for lane, keys in s.lanes.items():
                self._exec(
                    cur,
                    "INSERT INTO summary_lanes (summary_id, lane, keys, key_times, mean_key) VALUES (?, ?, ?, ?, ?)",
                    (s.id, lane, *lane_to_row(keys)),
                )
            table, column = ("events", "summary_id") if s.level == 1 else ("summaries", "parent_id")
            for child in s.children:
                sql = f"UPDATE {table} SET {column} = ? WHERE id = ? AND user_id = ?"
                self._exec(cur, sql, (s.id, child, s.user_id))
        return s

    def insert_note(self, n: Note) -> Note:
        with self._tx() as cur:
            n.id = int(
                self._exec(
                    cur,
                    "INSERT INTO notes (user_id, kind, text, text_key, t_first, t_last, session_id, count)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (n.user_id, n.kind, n.text, array_to_bytes(n.text_key), n.t_first, n.t_last, n.session_id, n.count),
                ).fetchone()[0]
            )
        return n

    def touch_note(self, note_id: int, t_last: float, count: int) -> None:
        """A duplicate of note `note_id` was seen again."""
        with self._tx() as cur:
            self._exec(cur, "UPDATE notes SET t_last = ?, count = ? WHERE id = ?", (t_last, count, note_id))

    def forget(self, user_id: str) -> int:
        """Remove every row and shard of `user_id`; returns the number of rows removed."""
        with self._tx() as cur:
            removed = 0
            for sql in (
                "DELETE FROM event_lanes WHERE event_id IN (SELECT id FROM events WHERE user_id = ?)",
                "DELETE FROM summary_lanes WHERE summary_id IN (SELECT id FROM summaries WHERE user_id = ?)",
                "DELETE FROM events WHERE user_id = ?",
                "DELETE FROM summaries WHERE user_id = ?",
                "DELETE FROM notes WHERE user_id = ?",
                "DELETE FROM payloads WHERE user_id = ?",
                "DELETE FROM sessions WHERE user_id = ?",
            ):
                removed += max(0, self._exec(cur, sql, (user_id,)).rowcount)
        if self.archive is not None:
            self.archive.forget(user_id)  # after the rows: a crash in between leaves files no row points at
        return removed

    # -- reads ------------------------------------------------------------------------------------

    def load_events(
        self, user_id: str, after_id: int = 0, ids: Sequence[int] | None = None, with_keys: bool = True
    ) -> list[Event]:
        """Events of a user with their keys (not payloads), in id order; `ids` restricts to those events;
        `with_keys=False` leaves `lanes` empty (recall only needs the transcripts of the chosen events)."""
        where, params = "e.user_id = ? AND e.id > ?", [user_id, after_id]
        if ids is not None:
            if not ids:
                return []
            where += f" AND e.id IN ({','.join('?' * len(ids))})"
            params += list(ids)
        rows = self._query(
            f"SELECT e.id, e.session_id, e.t_start, e.t_end, e.utterances, e.text_key, e.summary_id FROM events e"
            f" WHERE {where} ORDER BY e.id",
            params,
        )
        lanes = self._query(
            f"SELECT l.event_id, l.lane, l.keys, l.key_times, l.mean_key FROM event_lanes l JOIN events e"
            f" ON e.id = l.event_id WHERE {where} ORDER BY l.event_id, l.lane",
            params,
        ) if with_keys else []
        by_event: dict[int, dict[str, LaneKeys]] = {}
        for eid, lane, k, kt, mk in lanes:
            by_event.setdefault(int(eid), {})[lane] = lane_from_row(k, kt, mk)
        return [
            Event(
                user_id=user_id, session_id=sid, t_start=float(t0), t_end=float(t1),
                utterances=utterances_from_json(utt), lanes=by_event.get(int(eid), {}),
                text_key=None if tk is None else array_from_bytes(tk), id=int(eid), summary_id=int(sumid),
            )
            for eid, sid, t0, t1, utt, tk, sumid in rows
        ]

    def load_summaries(
        self, user_id: str, after_id: int = 0, session_id: str | None = None, ids: Sequence[int] | None = None
    ) -> list[Summary]:
        where, params = "s.user_id = ? AND s.id > ?", [user_id, after_id]
        if session_id is not None:
            where, params = where + " AND s.session_id = ?", [*params, session_id]
        if ids is not None:
            if not ids:
                return []
            where, params = where + f" AND s.id IN ({','.join('?' * len(ids))})", [*params, *ids]
        rows = self._query(
            f"SELECT s.id, s.session_id, s.level, s.t_start, s.t_end, s.text, s.children, s.text_key, s.parent_id"
            f" FROM summaries s WHERE {where} ORDER BY s.id",
            params,
        )
        lanes = self._query(
            f"SELECT l.summary_id, l.lane, l.keys, l.key_times, l.mean_key FROM summary_lanes l JOIN summaries s"
            f" ON s.id = l.summary_id WHERE {where} ORDER BY l.summary_id, l.lane",
            params,
        )
        by_summary: dict[int, dict[str, LaneKeys]] = {}
        for sid, lane, k, kt, mk in lanes:
            by_summary.setdefault(int(sid), {})[lane] = lane_from_row(k, kt, mk)
        return [
            Summary(
                user_id=user_id, session_id=sess, level=int(level), t_start=float(t0), t_end=float(t1), text=text,
                children=[int(c) for c in children.split(",") if c], text_key=array_from_bytes(tk),
                lanes=by_summary.get(int(sid), {}), id=int(sid), parent_id=int(parent),
            )
            for sid, sess, level, t0, t1, text, children, tk, parent in rows
        ]

    def unsummarised_events(self, user_id: str, session_id: str) -> list[Event]:
        """Events of a session that no summary covers yet, in time order (the consolidator's input)."""
        rows = self._query(
            "SELECT id FROM events WHERE user_id = ? AND session_id = ? AND summary_id = 0 ORDER BY id",
            (user_id, session_id),
        )
        return self.load_events(user_id, ids=[int(r[0]) for r in rows])

    def unparented_summaries(self, user_id: str, session_id: str, level: int) -> list[Summary]:
        return [s for s in self.load_summaries(user_id, session_id=session_id) if s.level == level and not s.parent_id]

    def sessions_with_unsummarised(self, user_id: str) -> list[str]:
        rows = self._query(
            "SELECT DISTINCT session_id FROM events WHERE user_id = ? AND summary_id = 0 ORDER BY session_id",
            (user_id,),
        )
        return [str(r[0]) for r in rows]

    def load_notes(self, user_id: str) -> list[Note]:
        rows = self._query(
            "SELECT id, kind, text, text_key, t_first, t_last, session_id, count FROM notes WHERE user_id = ?"
            " ORDER BY id",
            (user_id,),
        )
        return [
            Note(user_id=user_id, kind=kind, text=text, text_key=array_from_bytes(tk), t_first=float(t0),
                 t_last=float(t1), session_id=sess, count=int(count), id=int(nid))
            for nid, kind, text, tk, t0, t1, sess, count in rows
        ]

    def load_payload(self, user_id: str, event_id: int, lane: str) -> FramePayload:
        rows = self._query(
            "SELECT l.payload_ref FROM event_lanes l JOIN events e ON e.id = l.event_id"
            " WHERE l.event_id = ? AND l.lane = ? AND e.user_id = ?",
            (event_id, lane, user_id),
        )
        if not rows:
            raise KeyError(f"event {event_id} of user {user_id!r} has no lane {lane!r}")
        ref = str(rows[0][0])
        if ref.startswith("db:"):
            data = self._query("SELECT data FROM payloads WHERE id = ?", (int(ref[3:]),))[0][0]
            return payload_from_bytes(bytes(data))
        if self.archive is None:
            raise RuntimeError(f"payload {ref!r} lives in shards, but store {self.location} has no shard archive")
        return payload_from_bytes(self.archive.read(user_id, ref))

    def users(self) -> list[tuple[str, int, int, int]]:
        """(user id, events, summaries, notes) for every user with anything stored."""
        counts: dict[str, list[int]] = {}
        for i, table in enumerate(("events", "summaries", "notes")):
            for user, n in self._query(f"SELECT user_id, count(*) FROM {table} GROUP BY user_id"):
                counts.setdefault(user, [0, 0, 0])[i] = int(n)
        return [(u, c[0], c[1], c[2]) for u, c in sorted(counts.items())]

    def sessions(self, user_id: str) -> list[tuple[str, float, float | None]]:
        rows = self._query("SELECT id, started, ended FROM sessions WHERE user_id = ? ORDER BY started", (user_id,))
        return [(sid, float(a), None if b is None else float(b)) for sid, a, b in rows]
