"""``python -m pipeline.fetch <URL>/<name> <dir>``: a published package into a new folder, every digest checked.

What ``python -m pipeline.publish --list <URL>`` lists can be fetched; the folder is then a
package ``python -m runtime`` and ``pipeline.infer``'s readers take. Before anything is
written, <dir> must be new or an empty folder, and the whole manifest must be JSON passing
pipeline.store.publication_schema (each field's type, the name asked for, plain relative paths,
sizes summing to ``bytes``, the tree digest) and fit on the disk. Each blob then streams with its
declared size as a hard limit (a longer one is refused after at most that many bytes) and its
sha256 checked, and the tree must be the package its own manifest.json describes. It all
happens in a scratch folder beside <dir> renamed to <dir> at the end: on any failure <dir> and
its parent hold what they held before (a scratch left by a killed fetch goes at the next one).
Credentials come from the environment and fsspec's or botocore's config (AWS_ENDPOINT_URL for
an S3-compatible server). Every failure is one line on stderr. Exit codes: 0 fetched; 1 refused
(the publication fails a check, or does not fit) or a download failed; 2 bad input (the source,
the name, a name not published there, a taken <dir>); 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="<URL>/<name>: where it is published and its name (see pipeline.publish --list)")
    parser.add_argument("dir", type=Path, help="the folder to create (absent or empty)")
    args = parser.parse_args(argv)
    from pipeline.store.publications import PublicationError, fetch
    from pipeline.store.remote import Remote, check_url, shown

    if "/" not in args.source.rstrip("/"):
        print(f"error: source: {args.source!r} is not allowed; allowed: <URL>/<name>", file=sys.stderr)
        return 2
    url, name = args.source.rstrip("/").rsplit("/", 1)
    untouched = f"(nothing written to {args.dir})"
    try:
        remote = Remote(check_url("source", url))
        doc = fetch(remote, name, args.dir)
    except (PublicationError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as e:
        print(f"error: {name} from {shown(url)}: {_one_line(e)} {untouched}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"error: {name} from {shown(url)}: interrupted {untouched}", file=sys.stderr)
        return 130
    print(f"fetched {doc['name']} ({doc['model']}, {doc['target']}, key {doc['key'][:12]}…) to {args.dir}: "
          f"{len(doc['files'])} files, {doc['bytes'] / 1e6:.1f} MB, every sha256 checked")
    return 0


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
