"""The passes: importing this package registers every pass (cheaply: no heavy imports)."""
from passes import load, reference  # noqa: F401,E402
from passes import compile_ai100, compile_ort, export, package, rewrites, validate  # noqa: F401,E402
from passes.transforms import static_kv  # noqa: F401,E402
