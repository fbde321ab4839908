"""Model parameters in generated C: the weights blob, `const` arrays, and packed forms.

Every weight and constant a kernel reads gets an entry: its raw data, or a form derived from it
at build time (GEMM-packed panels). Entries are laid out in first-request order, each at a
64-byte-aligned offset of the payload. The blob (`weights.bin`) is a 64-byte header — magic
`KILNWTS1`, payload bytes, checksum, zeros — followed by the payload, so `<model>_init` can
refuse a blob built for another model. Small models compile the same data in as `const` arrays.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kiln.codegen.names import Namer
from kiln.codegen.writer import CodeWriter
from kiln.ir.graph import Module, Op
from kiln.ir.ops.core import Constant, Weight

MAGIC = b"KILNWTS1"
HEADER_BYTES = 64
ALIGN = 64


@dataclass
class ParamEntry:
    """One array in the blob: its C name, float32 data and payload offset."""

    ident: str
    data: np.ndarray
    source: str
    offset: int = 0


def checksum(payload: bytes) -> int:
    """sum_i word_i * (2i + 1) over little-endian uint64 words, mod 2^64 (C: kiln_checksum)."""
    words = np.frombuffer(payload, dtype="<u8")
    odd = np.arange(1, 2 * len(words), 2, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return int(np.sum(words * odd, dtype=np.uint64))


def float_literal(x: float) -> str:
    """An exact C float literal (hexadecimal), INFINITY / NAN for the special values."""
    if np.isnan(x):
        return "NAN"
    if np.isinf(x):
        return "INFINITY" if x > 0 else "(-INFINITY)"
    return f"{float(np.float32(x)).hex()}f"


def param_array(op: Op, module: Module) -> np.ndarray:
    """The data of a weight or constant op (a clear error when weights were elided)."""
    kind = op.kind
    if isinstance(kind, Constant):
        return kind.value.array
    assert isinstance(kind, Weight)
    if kind.name not in module.weights:
        raise op.error(f"weight @{kind.name} has no data (weights were elided)",
                       hint="compile a module loaded with its .npz weights")
    return module.weights[kind.name]


class ParamTable:
    """Parameter arrays requested by the kernels, keyed by (op, form)."""

    def __init__(self, module: Module, namer: Namer) -> None:
        self.module = module
        self.namer = namer
        self.entries: list[ParamEntry] = []
        self._by_key: dict[tuple[Op, str], ParamEntry] = {}

    def raw(self, op: Op) -> str:
        """The C name of `op`'s data as stored (row-major float32)."""
        return self.form(op, "raw", lambda a: a)

    def form(self, op: Op, form: str, make: Callable[[np.ndarray], np.ndarray]) -> str:
        """The C name of `make(data)`, computed once per (op, form)."""
        key = (op, form)
        entry = self._by_key.get(key)
        if entry is None:
            data = np.ascontiguousarray(make(param_array(op, self.module)), np.float32).ravel()
            hint = op.kind.name if isinstance(op.kind, Weight) else "const"
            suffix = "" if form == "raw" else "_" + form
            ident = self.namer.name(f"{hint}{suffix}", prefix="w_")
            entry = ParamEntry(ident, data, hint)
            self._by_key[key] = entry
            self.entries.append(entry)
        return entry.ident

    def layout(self) -> int:
        """Assign payload offsets; returns the payload size in bytes."""
        offset = 0
        for entry in self.entries:
            entry.offset = offset
            offset += -(-entry.data.nbytes // ALIGN) * ALIGN
        return offset

    def payload(self) -> bytes:
        size = self.layout()
        out = bytearray(size)
        for entry in self.entries:
            out[entry.offset:entry.offset + entry.data.nbytes] = entry.data.astype("<f4").tobytes()
        return bytes(out)

    def blob(self) -> bytes:
        """Header + payload: the contents of `weights.bin`."""
        payload = self.payload()
        header = MAGIC + struct.pack("<QQ", len(payload), checksum(payload))
        return header.ljust(HEADER_BYTES, b"\0") + payload

    @property
    def nbytes(self) -> int:
        return sum(e.data.nbytes for e in self.entries)

    def const_arrays(self, w: CodeWriter) -> None:
        """`static const float` definitions of every entry (const-weights mode)."""
        for entry in self.entries:
            values = entry.data if entry.data.size else np.zeros(1, np.float32)
            w.line(f"static const float {entry.ident}[{values.size}] KILN_ALIGN64 = {{")
            with w.indented():
                for start in range(0, values.size, 6):
                    chunk = values[start:start + 6]
                    w.line(", ".join(float_literal(float(v)) for v in chunk) + ",")
            w.line("};")
