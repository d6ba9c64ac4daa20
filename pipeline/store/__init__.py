"""The store: content-addressed blobs and trees (local.py), portable action records (records.py),
the machine-local digest memo (memo.py), digests (digests.py); upkeep in maintenance.py."""
from pipeline.store.files import content_digest, remove_tree  # noqa: F401
from pipeline.store.local import Store  # noqa: F401
from pipeline.store.records import ActionRecord, RecordUnusable, now_iso  # noqa: F401
