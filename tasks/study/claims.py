"""Once-per-study work claimed in the study's own store, never by "check, then act".

A claim is a row of the table `hpo_claims` in the Optuna database (SQLite or PostgreSQL: the one
store every worker of a study already shares). Inserting it is the claim: the primary key lets
exactly one worker win. The winner renews it while it works (`renew`, from the trial's heartbeat)
and marks it done; a claim not renewed for `stale_after_s` belongs to a worker that died, and the
next worker takes it over (a compare-and-set on its time, so again exactly one does). Ctrl-C or an
error gives the claim back (`release`), so the work goes back to the queue at once.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from contextlib import contextmanager
from collections.abc import Iterator

from optuna.storages import RDBStorage
from sqlalchemy import Boolean, Column, Float, MetaData, String, Table, and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, ProgrammingError

log = logging.getLogger("hpo")

_METADATA = MetaData()
CLAIMS = Table(
    "hpo_claims",
    _METADATA,
    Column("study", String(512), primary_key=True),
    Column("key", String(512), primary_key=True),
    Column("worker", String(512), nullable=False),
    Column("renewed_at", Float, nullable=False),
    Column("done", Boolean, nullable=False, default=False),
)


def worker_id() -> str:
    import os

    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


class Claims:
    """The claims of one study in its Optuna database."""

    def __init__(self, storage: RDBStorage, study: str, stale_after_s: float):
        self.engine, self.study, self.stale_after_s = storage.engine, study, stale_after_s
        try:
            _METADATA.create_all(self.engine, checkfirst=True)
        except (IntegrityError, ProgrammingError):  # another worker created it between the check and the create
            _METADATA.create_all(self.engine, checkfirst=True)

    def claim(self, key: str) -> bool:
        """True when this worker now holds `key`: it was free, or its holder stopped renewing it."""
        now, me = time.time(), worker_id()
        try:
            with self.engine.begin() as db:
                db.execute(insert(CLAIMS).values(study=self.study, key=key, worker=me, renewed_at=now, done=False))
            return True
        except IntegrityError:
            pass
        with self.engine.begin() as db:
            row = db.execute(select(CLAIMS.c.renewed_at, CLAIMS.c.done).where(self._row(key))).first()
            if row is None or row.done or row.renewed_at > now - self.stale_after_s:
                return False
            taken = db.execute(update(CLAIMS).where(and_(self._row(key), CLAIMS.c.renewed_at == row.renewed_at))
                               .values(worker=me, renewed_at=now))  # fmt: skip
            return taken.rowcount == 1

    def renew(self, key: str) -> None:
        with self.engine.begin() as db:
            db.execute(update(CLAIMS).where(self._row(key)).values(renewed_at=time.time()))

    def finish(self, key: str) -> None:
        with self.engine.begin() as db:
            db.execute(update(CLAIMS).where(self._row(key)).values(done=True, renewed_at=time.time()))

    def reopen(self, key: str) -> None:
        """Done work to be done again (its result was lost): a done claim becomes free; a claim
        someone holds now is left to them."""
        with self.engine.begin() as db:
            db.execute(delete(CLAIMS).where(and_(self._row(key), CLAIMS.c.done.is_(True))))

    def release(self, key: str) -> None:
        with self.engine.begin() as db:
            db.execute(delete(CLAIMS).where(and_(self._row(key), CLAIMS.c.done.is_(False))))

    def pending(self, keys: list[str]) -> list[str]:
        """Of `keys`, those claimed by a live worker and not done yet (someone is on them)."""
        with self.engine.begin() as db:
            rows = db.execute(select(CLAIMS.c.key, CLAIMS.c.renewed_at, CLAIMS.c.done).where(
                and_(CLAIMS.c.study == self.study, CLAIMS.c.key.in_(keys)))).all()  # fmt: skip
        fresh = time.time() - self.stale_after_s
        return [r.key for r in rows if not r.done and r.renewed_at > fresh]

    def done(self, keys: list[str]) -> set[str]:
        """Of `keys`, those whose work is done."""
        with self.engine.begin() as db:
            rows = db.execute(select(CLAIMS.c.key).where(
                and_(CLAIMS.c.study == self.study, CLAIMS.c.key.in_(keys), CLAIMS.c.done.is_(True)))).all()  # fmt: skip
        return {r.key for r in rows}

    @contextmanager
    def held(self, key: str) -> Iterator[None]:
        """Work under a claim already taken: renewed from a thread of its own while the block runs
        (a long test evaluation must not look like a dead worker), done when the block ends, given
        back if it raises (Ctrl-C included)."""
        stop = threading.Event()

        def keep_renewing() -> None:
            while not stop.wait(self.stale_after_s / 4):
                try:
                    self.renew(key)
                except Exception as exc:  # noqa: BLE001 - a store blink; the next renewal tries again
                    log.warning("claim %s of %s not renewed: %s", key, self.study, exc)

        renewer = threading.Thread(target=keep_renewing, name=f"claim-{key}", daemon=True)
        renewer.start()
        try:
            yield
        except BaseException:
            stop.set()
            self.release(key)
            raise
        finally:
            stop.set()
            renewer.join()
        self.finish(key)

    def claim_or_wait(self, key: str, poll_s: float = 2.0) -> bool:
        """True once this worker holds `key`; False when another worker has done it meanwhile (the
        loser waits, and takes over if the holder dies)."""
        while True:
            if self.claim(key):
                return True
            if self.done([key]):
                return False
            time.sleep(poll_s)

    def _row(self, key: str):
        return and_(CLAIMS.c.study == self.study, CLAIMS.c.key == key)
