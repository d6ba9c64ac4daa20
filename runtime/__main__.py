"""`python -m runtime <package_dir> --prompt "..." --max-new-tokens N`: generate with a built package."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtime import package_format as fmt
from runtime.generate import generate
from runtime.sessions import open_session
from runtime.tokenizer import load_tokenizer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime", description=__doc__)
    ap.add_argument("package_dir")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="override the package's intra-op threads")
    ap.add_argument("--private-weights", action="store_true",
                    help="let ONNX Runtime pre-pack weights per graph: faster decode, more memory")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument("--device", choices=("cpu", "ai100"), default="cpu",
                    help="cpu: ONNX Runtime (for an AI 100 package, its ONNX); ai100: the QPC through qaicrt")
    ap.add_argument("--device-ids", default="0", help="ai100: comma-separated device ids (default 0)")
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
    if args.device == "ai100":
        try:
            session = open_session(args.package_dir, "ai100", verify=False, device_ids=[int(i) for i in args.device_ids.split(",")])
        except ImportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        session = open_session(args.package_dir, verify=False, num_threads=args.threads,
                               share_weights=not args.private_weights)
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
