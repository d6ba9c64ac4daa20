"""``python -m pipeline.fetch <URL>/<name> <dir>``: a published package into a new folder, every digest checked.

What ``python -m pipeline.publish --list <URL>`` lists can be fetched; the folder is then a
package ``python -m runtime`` and ``pipeline.infer``'s readers take. A blob whose sha256 or
size differs from the publication, a path that would leave the folder, or a publication that
is not the package its manifest describes is refused, and nothing is left at <dir>.
Credentials come from the environment and fsspec's or botocore's config (AWS_ENDPOINT_URL for
an S3-compatible server). Exit codes: 0 fetched; 1 a refused or unreadable download; 2 bad input.
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
    try:
        remote = Remote(check_url("source", url))
        doc = fetch(remote, name, args.dir)
    except (PublicationError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as e:
        print(f"error: {name} from {shown(url)}: {e} (nothing written to {args.dir})", file=sys.stderr)
        return 1
    print(f"fetched {doc['name']} ({doc['model']}, {doc['target']}, key {doc['key'][:12]}…) to {args.dir}: "
          f"{len(doc['files'])} files, {doc['bytes'] / 1e6:.1f} MB, every sha256 checked")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
