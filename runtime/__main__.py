"""`python -m runtime <package_dir> --prompt "..." --max-new-tokens N`: generate with a built package."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtime import package_format as fmt
from runtime.generate import generate
from runtime.sessions import open_session, session_names
from runtime.tokenizer import load_tokenizer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime", description=__doc__)
    ap.add_argument("package_dir")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime: override the package's intra-op threads")
    ap.add_argument("--private-weights", action="store_true",
                    help="ONNX Runtime: let it pre-pack weights per graph: faster decode, more memory")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument("--device", choices=session_names(), default=None,
                    help="the target whose session runs the package (default: the package's own target; cpu: ONNX "
                         "Runtime, which also runs a device package's ONNX view)")
    ap.add_argument("--device-ids", default=None, help="comma-separated device ids, for a device target's session")
    ap.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                    help="check every file against the manifest's sha256 before loading (default: for packages "
                         "up to 2 GiB)")
    args = ap.parse_args(argv)
    try:
        fmt.check_package(Path(args.package_dir), args.verify)
    except (OSError, ValueError) as e:  # damaged, or not a package
        print(f"error: {e}", file=sys.stderr)
        return 2

    tokenizer = load_tokenizer(args.package_dir)
    options = {**({"num_threads": args.threads} if args.threads else {}),
               **({"share_weights": False} if args.private_weights else {}),
               **({"device_ids": [int(i) for i in args.device_ids.split(",")]} if args.device_ids else {})}
    try:
        session = open_session(args.package_dir, args.device, verify=False, **options)
    except ImportError as e:  # the target's runtime is not installed here
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TypeError as e:  # an option the target's session does not take
        print(f"error: {' '.join(f'--{o}' for o in options)}: not an option of this target's session ({e})", file=sys.stderr)
        return 2
    ids = tokenizer(args.prompt).input_ids
    result = generate(session, ids, args.max_new_tokens)
    text = tokenizer.decode(result.tokens[0], skip_special_tokens=False)
    if args.json:
        print(json.dumps({"prompt": args.prompt, "text": text, "tokens": result.tokens[0], "metrics": result.metrics}))
        return 0
    print(args.prompt + text)
    m = result.metrics
    print(f"\nprefill (TTFT) {m['prefill_seconds'] * 1000:.1f} ms for {int(m['prompt_tokens'])} tokens | "
          f"decode {m['decode_tokens_per_second']:.1f} tok/s | total {m['total_seconds']:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
