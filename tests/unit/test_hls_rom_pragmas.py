"""Lookup-table ROMs in io_parallel: each table a layer reads gets a `BIND_STORAGE` pragma
(dual-port ROM, LUTRAM up to 64 words, block RAM beyond) whose stated copy count follows the
reuse factor (ceil(ceil(reads / R) / 2); a table layer's II is R capped at its element
count), and the estimator counts those copies and that II."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import kiln
from kiln.targets.cost.fpga_estimate import TABLE_SIZE
from kiln.targets.fpga import FpgaArtifact


def _compile(rf: int, io: str = "parallel") -> FpgaArtifact:
    torch.manual_seed(int(np.random.SeedSequence().generate_state(1)[0] % (1 << 31)))
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Sigmoid(),
                                torch.nn.Linear(6, 5), torch.nn.Softmax(dim=-1)).eval()
    x = np.random.default_rng().standard_normal((1, 8)).astype(np.float32)
    art = kiln.compile(model, (x,), target="fpga", reuse_factor=rf, io=io, fit="off")
    assert isinstance(art.artifact, FpgaArtifact)
    return art.artifact


def _pragmas(fpga: FpgaArtifact) -> dict[str, tuple[int, str]]:
    """table name -> (stated copies, impl), from the generated sources."""
    text = "\n".join(v for k, v in fpga.files.items() if k.endswith((".cpp", ".h")))
    copies = {m[0]: int(m[1]) for m in re.findall(
        r"// (\w+): \d+ reads per call at II=\d+: (\d+) dual-port", text)}
    binds = dict(re.findall(r"#pragma HLS BIND_STORAGE variable=(\w+) type=rom_2p "
                            r"impl=(\w+)", text))
    assert set(copies) == set(binds)
    return {name: (copies[name], binds[name]) for name in copies}


@pytest.mark.parametrize("rf", [1, 2, 3, 6])
def test_copies_follow_the_reuse_factor_and_the_estimate(rf: int) -> None:
    fpga = _compile(rf)
    roms = _pragmas(fpga)
    sigmoid = [n for n in roms if n.endswith("_table")]
    exp = [n for n in roms if n.endswith("_exp")]
    inv = [n for n in roms if n.endswith("_inv")]
    assert len(sigmoid) == len(exp) == len(inv) == 1
    assert roms[sigmoid[0]][0] == math.ceil(math.ceil(6 / rf) / 2)
    assert roms[exp[0]][0] == math.ceil(math.ceil(5 / rf) / 2)
    assert roms[inv[0]][0] == 1  # one 1/sum read per row
    assert {impl for _, impl in roms.values()} == {"bram"}  # 1024-word tables
    layers = fpga.report()["layers"]
    tables = [row for row in layers if row["op"] == "table"]
    assert len(tables) == 2
    per_copy = [math.ceil(TABLE_SIZE * 16 / 18432)]  # (16-bit outputs: one BRAM18K a copy)
    stated = roms[sigmoid[0]][0] + roms[exp[0]][0] + roms[inv[0]][0]
    assert sum(row["bram"] for row in tables) == stated * per_copy[0]
    assert sorted(row["ii"] for row in tables) == sorted([min(rf, 6), min(rf, 5)])
    text = "\n".join(v for k, v in fpga.files.items() if k.endswith(".cpp"))
    stated_ii = re.findall(r"reads per call at II=(\d+)", text)
    assert sorted({int(v) for v in stated_ii}) == sorted({min(rf, 6), min(rf, 5)})


def test_stream_io_emits_no_rom_pragma() -> None:
    fpga = _compile(1, io="stream")
    text = "\n".join(fpga.files.values())
    assert "BIND_STORAGE" not in text
