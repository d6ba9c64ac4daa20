"""What every command-line entry point does around its Hydra main: check, launch, exit with the status."""
from __future__ import annotations

import sys
from typing import Callable


def launch(main: Callable[[], object], config_name: str) -> None:
    """Bad overrides (every sweep point) stop here in one line with exit 2; then Hydra runs the
    job(s), and the process exits with the worst job's code (pipeline.callbacks.ExitStatus)."""
    from pipeline.callbacks import exit_code
    from pipeline.overrides import rewrite_argv
    from pipeline.precheck import precheck_overrides

    problem = precheck_overrides(sys.argv[1:], config_name=config_name)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = rewrite_argv(sys.argv[1:])
    main()
    sys.exit(exit_code())
