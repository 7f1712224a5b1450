"""Group commit: units of work that arrive within a few milliseconds share one database transaction.

Every PostgreSQL COMMIT waits for its WAL flush; under load most of a booking's time is that wait.
A group opens one connection and one transaction when its first member arrives and takes members
for `window_s` (or until `members_max`). Members take turns on the connection, each inside its own
SAVEPOINT: a member that fails rolls back its savepoint only, and the others' work stands. When the
window has closed and every member has finished its turn, the last to finish sends the one COMMIT
and every member's `commit()` returns only then. If that COMMIT fails, every member's `commit()`
raises GroupCommitFailed: nothing was acknowledged, and nothing was written.

Exactly once holds as without grouping: a member's rows are visible to the members after it in
the same group (one transaction), so a duplicate in the same group meets the first one's unique key.

Only a use case that does all its work in one `with uow:` block and touches the unit of work no
more after `commit()` may run grouped (the booking of a channel notification): after its turn the
connection belongs to the next member.
"""

import threading
import time
from collections.abc import Callable

from sqlalchemy import Connection, Engine


class GroupCommitFailed(Exception):
    """The shared COMMIT failed: none of the group's members was written."""


class CommitGroup:
    def __init__(self, engine: Engine, *, window_s: float, members_max: int, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self.deadline = monotonic() + window_s
        self.members_max = members_max
        self.connection: Connection = engine.connect()
        self.transaction = self.connection.begin()
        self.turn = threading.Lock()  # one member's work at a time on the shared connection
        self._cond = threading.Condition()
        self._joined = 0
        self._finished = 0
        self._closed = False  # no member joins any more
        self._committing = False
        self._done = False
        self._error: BaseException | None = None

    def try_join(self) -> bool:
        with self._cond:
            if self._closed or self._joined >= self.members_max or self._monotonic() >= self.deadline:
                self._closed = True
                return False
            self._joined += 1
            return True

    @property
    def joined(self) -> int:
        return self._joined

    @property
    def finished(self) -> int:
        return self._finished

    def leave(self) -> BaseException | None:
        """A member has finished its turn (savepoint released or rolled back). Waits for the group's
        COMMIT, sending it if this member is the last; returns its error, None when it committed."""
        with self._cond:
            self._finished += 1
            self._cond.notify_all()
            while True:
                if self._done:
                    return self._error
                remaining = self.deadline - self._monotonic()
                if not self._closed and remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self._closed = True
                if self._finished < self._joined or self._committing:
                    self._cond.wait()
                    continue
                self._committing = True
                break
        error: BaseException | None = None
        try:  # outside the lock: a COMMIT waits for the disk, arrivals must not wait for it
            self.transaction.commit()
        except BaseException as failure:  # noqa: BLE001 - every member is told, whatever it was
            error = failure
        finally:
            self.connection.close()
        with self._cond:
            self._error = error
            self._done = True
            self._cond.notify_all()
        return error


class GroupCommit:
    """Hands each arriving unit of work to the open group, or opens one."""

    def __init__(self, engine: Engine, *, window_s: float, members_max: int = 32, monotonic: Callable[[], float] = time.monotonic) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("group commit is for PostgreSQL (SQLite has one writer at a time anyway)")
        if not 0 < window_s <= 0.05 or not 1 <= members_max <= 256:
            raise ValueError("group commit: a window of up to 50 ms and 1 to 256 members")
        self.engine = engine
        self.window_s = window_s
        self.members_max = members_max
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._open: CommitGroup | None = None
        self.groups_opened = 0  # each one transaction: members / groups is how much grouping saves

    @property
    def open_group(self) -> CommitGroup | None:
        return self._open

    def join(self) -> CommitGroup:
        with self._lock:
            if self._open is not None and self._open.try_join():
                return self._open
            group = CommitGroup(self.engine, window_s=self.window_s, members_max=self.members_max, monotonic=self._monotonic)
            group.try_join()
            self._open = group
            self.groups_opened += 1
            return group
