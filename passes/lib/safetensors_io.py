"""Safetensors files written one tensor at a time, and read one tensor at a time (never the whole file mapped).

The layout is safetensors' own (``safetensors.torch.save_file``): an 8-byte little-endian header
length, a compact JSON header (``__metadata__`` first, then the tensors ordered by element size,
largest first, then by name) padded with spaces to 8 bytes, then the tensors' bytes in that
order. So a file streamed here is byte for byte the one ``save_pretrained`` writes from memory.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Mapping

# safetensors dtype name -> (torch dtype name, bytes per element)
DTYPES = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
          "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
          "BOOL": ("bool", 1)}
NAMES = {torch_name: st for st, (torch_name, _) in DTYPES.items()}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def dtype_name(tensor: Any) -> str:
    """The safetensors name of a torch tensor's dtype."""
    return NAMES[str(tensor.dtype).removeprefix("torch.")]


def layout(entries: Mapping[str, tuple[str, tuple[int, ...]]], metadata: Mapping[str, str]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """(the header bytes, {name: (begin, end) within the data}) of a file holding ``entries`` {name: (dtype, shape)}."""
    order = sorted(entries, key=lambda n: (-DTYPES[entries[n][0]][1], n))
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    spans, offset = {}, 0
    for name in order:
        dtype, shape = entries[name]
        size = DTYPES[dtype][1]
        for d in shape:
            size *= d
        spans[name] = (offset, offset + size)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, spans


class Writer:
    """A safetensors file whose header is written first and whose tensors are written later, in any order."""

    def __init__(self, path: Path, entries: Mapping[str, tuple[str, tuple[int, ...]]], metadata: Mapping[str, str]):
        self.entries = dict(entries)
        head, self.spans = layout(self.entries, metadata)
        self.start = len(head)
        self.missing = set(self.entries)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(self.fd, head)
        os.ftruncate(self.fd, self.start + max((e for _, e in self.spans.values()), default=0))

    def write(self, name: str, tensor: Any) -> None:
        dtype, shape = self.entries[name]
        if dtype_name(tensor) != dtype or tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"safetensors: {name} is {dtype_name(tensor)} {tuple(tensor.shape)}, its header says {dtype} {shape}")
        data = memoryview(tensor.detach().contiguous().reshape(-1).view(_u8()).numpy())
        position = self.start + self.spans[name][0]
        while data:
            done = os.pwrite(self.fd, data, position)
            data, position = data[done:], position + done
        self.missing.discard(name)

    def close(self) -> None:
        os.close(self.fd)
        if self.missing:
            raise RuntimeError(f"safetensors: {len(self.missing)} tensors never written, e.g. {sorted(self.missing)[:3]}")


def _u8() -> Any:
    import torch

    return torch.uint8


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(where the data starts, the JSON header) of one safetensors file."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return 8 + size, json.loads(f.read(size))


def index(folder: Path) -> dict[str, tuple[Path, str, tuple[int, ...], int, int]] | None:
    """{tensor name: (file, dtype, shape, absolute begin, absolute end)} of an HF folder's safetensors
    (one file or shards named by its index); None when the folder has none."""
    folder = Path(folder)
    if (folder / INDEX).is_file():
        files = sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
    elif (folder / SINGLE).is_file():
        files = [SINGLE]
    else:
        return None
    found = {}
    for name in files:
        start, header = read_header(folder / name)
        for key, info in header.items():
            if key != "__metadata__":
                begin, end = info["data_offsets"]
                found[key] = (folder / name, info["dtype"], tuple(info["shape"]), start + begin, start + end)
    return found


def read(entry: tuple[Path, str, tuple[int, ...], int, int]) -> Any:
    """One tensor (a torch tensor owning its memory) from an ``index`` entry: a plain read, no mapping."""
    import torch

    path, dtype, shape, begin, end = entry
    buffer = bytearray(end - begin)
    with open(path, "rb") as f:
        f.seek(begin)
        if f.readinto(buffer) != len(buffer):
            raise OSError(f"safetensors: {path} is shorter than its header says")
    if not buffer:
        return torch.empty(shape, dtype=getattr(torch, DTYPES[dtype][0]))
    return torch.frombuffer(buffer, dtype=getattr(torch, DTYPES[dtype][0])).reshape(shape)
