"""STAND-IN for the Platform SDK's QAicApi_pb2 (tests only): an IoDesc that parses the
stand-in qaicrt's descriptor bytes into objects with the real message's field names."""
from __future__ import annotations

import json
from types import SimpleNamespace


def _ns(obj):
    if isinstance(obj, dict):
        return SimpleNamespace(**{k: _ns(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return [_ns(v) for v in obj]
    return obj


class IoDesc:
    def ParseFromString(self, data: bytes) -> None:
        parsed = _ns(json.loads(data))
        self.selected_set = parsed.selected_set
        self.allowed_shapes = parsed.allowed_shapes
