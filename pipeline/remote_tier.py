"""The remote tier around the local store: a local miss asks store.remote, a build is pushed to it.

The remote is a cache: whatever fails there (the network, a blob or a record that does not
check) is said in the stage's note, and the stage is built here or its build kept here.
"""
from __future__ import annotations

from pipeline.plan import BuildPlan
from pipeline.results import StageResult, one_line
from pipeline.store import ActionRecord, RecordUnusable, Store
from pipeline.store.remote import Remote


class RemoteTier:
    def __init__(self, remote: Remote, store: Store):
        self.remote = remote
        self.store = store

    @classmethod
    def of(cls, plan: BuildPlan, store: Store) -> RemoteTier | None:
        """The plan's store.remote around ``store``, or None without one."""
        if not plan.remote:
            return None
        return cls(Remote(plan.remote["url"], plan.remote["options"], plan.remote["push"]), store)

    def pull(self, key: str, r: StageResult) -> ActionRecord | None:
        """The remote's record of the key, pulled into the local store (blobs digest-checked), or None."""
        try:
            rec = self.remote.record(key)
            if rec is None:
                return None
            self.remote.pull(rec, self.store)
        except RecordUnusable as exc:
            r.note = f"remote not used: its record is unusable ({exc.reason})"
            return None
        except Exception as exc:  # noqa: BLE001 - the remote is a cache: on any failure, build
            r.note = f"remote not used: {one_line(exc)}"
            return None
        rec = self.store.lookup(key)
        if rec is not None:
            r.source, r.note = "remote", f"from {self.remote}"
        return rec

    def push(self, rec: ActionRecord, r: StageResult) -> None:
        """A record built here and its blobs, when store.push is on."""
        if not self.remote.push_enabled or not rec.materialized:
            return
        try:
            self.remote.push(rec, self.store)
        except Exception as exc:  # noqa: BLE001 - a failed push leaves the local build intact
            r.note = f"not pushed to {self.remote}: {one_line(exc)}"
