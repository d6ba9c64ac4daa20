"""What a package's own weights file costs the store: bytes on disk for the demo build and for 4 compiles of one export.

    python bench/store_bytes.py [--model smollm2_135m] [--store bench/.cache/store-bytes]

A package's external data files are files of their own (one link, so the onnx library opens
them): a reflink of their blob where the filesystem has them (no bytes), else a copy. Builds
the model for the CPU (up to its package) in a fresh store, then 3 more compiles of the same
export (compile.ctx_len 256, 512, 1024, 2048 in all), and prints after each: the store's bytes
on disk (every inode once), the bytes of the packages' own files, and the store as it was
before (every file a hard link to its blob, the own files costing nothing): the difference.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def own_bytes(store: Path) -> int:
    """Bytes of the files trees hold as their own (the records' ``owned`` files)."""
    from pipeline.store import Store

    s = Store(store)
    return sum(rec.files[rel][1] for rec in s.records.all() for rel in rec.owned)


def clone_kind(store: Path) -> str:
    from pipeline.store.files import clone_file

    with tempfile.TemporaryDirectory(dir=store) as d:
        (Path(d) / "a").write_bytes(b"x" * 4096)
        return clone_file(Path(d) / "a", Path(d) / "b")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--store", type=Path, default=ROOT / "bench" / ".cache" / "store-bytes")
    args = ap.parse_args()
    from pipeline.api import build, compose
    from pipeline.store.files import disk_bytes

    shutil.rmtree(args.store, ignore_errors=True)
    args.store.mkdir(parents=True)
    print(f"{args.model}, hw=cpu, a fresh store on a filesystem whose clones are: {clone_kind(args.store)}")
    print(f"{'after':<34}{'store MB':>10}{'own files MB':>14}{'before MB':>11}{'cost':>7}")
    for i, ctx in enumerate((256, 512, 1024, 2048)):
        cfg = compose([f"model={args.model}", f"store.root={args.store}", f"compile.ctx_len={ctx}"])
        result = build(cfg, echo=lambda line: None, goals=("package",))
        assert result.ok, [(s.name, s.error) for s in result.stages if s.error]
        total, own = disk_bytes(args.store), own_bytes(args.store)
        label = "the demo build (ctx_len 256)" if i == 0 else f"+ compile ctx_len {ctx} (export cached)"
        print(f"{label:<34}{total / 1e6:10.1f}{own / 1e6:14.1f}{(total - own) / 1e6:11.1f}"
              f"{total / (total - own):6.2f}x")


if __name__ == "__main__":
    main()
