"""Long fuzz run of kiln's readers: mutated `.kir` text, `.kir`+`.npz` pairs and ONNX bytes.

    .venv/bin/python bench/fuzz_parser.py --examples 20000 --mode all --out /tmp/fuzz_parser

The same mutators as `tests/unit/test_parser_fuzz.py` (byte flips, deletions, duplications,
token swaps, hostile snippets) drive hypothesis without a deadline or an example database, for
as many examples as asked; ONNX mode mutates the serialized bundled models' ONNX export bytes.
Anything but success or a `KilnError` (another exception, a parse over `--alarm` seconds) is
counted and written to `--out` as a reproducer. Prints one table row per mode: examples tried,
accepted, refused (KilnError), bad, and examples per second.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kiln
from kiln.errors import KilnError
from tests.unit.test_parser_fuzz import _mutate_npz, alarm, corpus, mutate


def onnx_corpus() -> list[bytes]:
    """The corpus modules exported to ONNX (kiln's own exporter), as bytes."""
    out = []
    for text, weights in corpus():
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "m.onnx"
            kiln.export_onnx(kiln.parse(text, weights), path)
            out.append(path.read_bytes())
    return out


def run_mode(mode: str, examples: int, seconds: int, out: Path) -> Counter[str]:
    tally: Counter[str] = Counter()
    texts = corpus()
    models = onnx_corpus() if mode == "onnx" else []

    def attempt(label: str, action: Callable[[], object], sample: bytes) -> None:
        tally["tried"] += 1
        try:
            with alarm(seconds), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                action()
            tally["accepted"] += 1
        except KilnError:
            tally["refused"] += 1
        except Exception:  # what the fuzzer is looking for
            tally["bad"] += 1
            out.mkdir(parents=True, exist_ok=True)
            stem = out / f"{mode}_{tally['bad']:04d}"
            stem.with_suffix(".input").write_bytes(sample)
            stem.with_suffix(".txt").write_text(f"{label}\n{traceback.format_exc()}")

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def body(data: st.DataObject) -> None:
        if mode == "onnx":
            blob = bytearray(data.draw(st.sampled_from(models)))
            blob = bytearray(_mutate_npz(bytes(blob), data.draw))
            attempt("import_onnx", lambda: kiln.import_onnx(bytes(blob)), bytes(blob))
            return
        text, weights = data.draw(st.sampled_from(texts))
        mutated = mutate(text, data.draw)
        if mode == "text":
            attempt("parse", lambda: kiln.parse(mutated, weights), mutated.encode("utf-8",
                                                                                 "replace"))
            return
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "m.kir"
            kiln.parse(text, weights).save(path)
            npz = path.with_suffix(".npz")
            target = data.draw(st.sampled_from(["kir", "npz", "both"]))
            if target != "kir":
                npz.write_bytes(_mutate_npz(npz.read_bytes(), data.draw))
            if target != "npz":
                path.write_text(mutated, encoding="utf-8", errors="replace")
            attempt("load", lambda: kiln.load(path), npz.read_bytes())

    body()
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--mode", choices=["text", "load", "onnx", "all"], default="all")
    parser.add_argument("--alarm", type=int, default=20, help="seconds before a parse is a hang")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "fuzz_parser")
    args = parser.parse_args()
    modes = ["text", "load", "onnx"] if args.mode == "all" else [args.mode]
    table = io.StringIO()
    table.write(f"{'mode':6} {'tried':>8} {'accepted':>9} {'refused':>8} {'bad':>5} {'ex/s':>7}\n")
    for mode in modes:
        start = time.perf_counter()
        tally = run_mode(mode, args.examples, args.alarm, args.out)
        rate = tally["tried"] / max(time.perf_counter() - start, 1e-9)
        table.write(f"{mode:6} {tally['tried']:8d} {tally['accepted']:9d} "
                    f"{tally['refused']:8d} {tally['bad']:5d} {rate:7.0f}\n")
    sys.stdout.write(table.getvalue())


if __name__ == "__main__":
    main()
