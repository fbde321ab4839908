"""A model compiles and links only the runtime sources its code calls into (`runtime_deps`).

- the parser agrees with the compiler: for every runtime file, the functions it finds are
  exactly the global function symbols `nm` lists in the file's object;
- the resolver follows calls through runtime files and header code, and skips the rest;
- a float model built from an empty cache compiles none of the int8 or sparse objects (the
  cache holds exactly the linked ones), links with `--no-undefined` and matches PyTorch;
- its export ships and its Makefile names exactly those sources, and `make` builds it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import kiln
from kiln.codegen.c.emitter import RUNTIME_SOURCES, config_header, runtime_sources
from kiln.codegen.c.options import COptions
from kiln.codegen.c.runtime_deps import defined_functions, linked_sources, static_macros
from kiln.targets.cpu import CpuArtifact
from kiln.targets.toolchains import gcc

needs_gcc = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")


@needs_gcc
@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils)")
def test_parser_finds_what_the_compiler_exports(tmp_path: Path) -> None:
    runtime = runtime_sources()
    for name, text in runtime.items():
        (tmp_path / name).write_text(text)
    toolchain = gcc.find("gcc")
    (tmp_path / "kiln_config.h").write_text(
        config_header(COptions(gcc.vector_width(toolchain, "native"))))
    gcc.compile_objects(toolchain, tmp_path, list(RUNTIME_SOURCES), gcc.flags("native", 2, False))
    local = static_macros(*(t for n, t in runtime.items() if n.endswith(".h")))
    for name in RUNTIME_SOURCES:
        listing = subprocess.run(["nm", "-g", "--defined-only", Path(name).stem + ".o"],
                                 cwd=tmp_path, capture_output=True, text=True, check=True)
        exported = {line.split()[2] for line in listing.stdout.splitlines()
                    if line.split()[1] in ("T", "W")}
        assert exported, name
        assert defined_functions(runtime[name], local) == exported, name


FAKE = {
    "a.h": "KILN_INLINE int kiln_h(int x) { return kiln_c(x); }\nint kiln_a(int);\n",
    "vec.h": "#define KILN_INLINE static inline __attribute__((always_inline))\n",
    "a.c": "/* calls kiln_d in a comment only */\nint kiln_a(int x,\n           int y) {\n"
           "    return kiln_b(x) + y;\n}\nstatic int kiln_local(void) { return kiln_d(); }\n",
    "b.c": "#define MINE static\nMINE int kiln_e(void) { return 0; }\n"
           "int kiln_b(int x) { return x; }\n",
    "c.c": "int kiln_c(int x) { return x; }\n",
    "d.c": "int kiln_d(void) { return 1; }\nint kiln_f(void) { return 2; }\n",
}


def test_resolver_follows_calls_and_header_code() -> None:
    """a.c through model code, b.c through a.c, c.c through header code; d.c through a
    static function of a.c (which may be called: conservative), not through a comment;
    once that call is gone, d.c is not linked."""
    assert linked_sources("void f(void) { kiln_a(1, 2); }", FAKE) == ("a.c", "b.c", "c.c",
                                                                       "d.c")
    fake = {**FAKE, "a.c": FAKE["a.c"].replace("return kiln_d();", "return 0;")}
    assert linked_sources("void f(void) { kiln_a(1, 2); }", fake) == ("a.c", "b.c", "c.c")
    assert linked_sources("void f(void) { }", fake) == ("c.c",)
    assert defined_functions(FAKE["b.c"]) == {"kiln_b"}  # MINE means static
    assert defined_functions(FAKE["a.c"]) == {"kiln_a"}


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(y.flatten(1))


@needs_gcc
def test_float_model_builds_only_the_objects_it_links(tmp_path: Path) -> None:
    torch.manual_seed(int(np.random.default_rng().integers(1 << 16)))
    model = Small().eval()
    x = torch.randn(2, 3, 8, 8)
    compiled = kiln.compile(model, x, target="cpu", cache_dir=str(tmp_path / "cache"))
    with torch.no_grad():
        want = model(x).numpy()
    got = np.asarray(compiled(x.numpy()))
    assert np.abs(got - want).max() <= 1e-4 * max(float(np.abs(want).max()), 1.0)

    artifact = compiled.artifact
    assert isinstance(artifact, CpuArtifact)
    sources = artifact.program.sources
    linked = sorted(n for n in sources if n.startswith("kiln_") and n.endswith(".c"))
    assert "kiln_gemm.c" in linked and "kiln_pool.c" not in linked  # 2x2/2 is inline
    for unused in ("kiln_qgemm.c", "kiln_qvnni.c", "kiln_qpack.c", "kiln_qmatmul.c",
                   "kiln_sparse.c"):
        assert unused not in linked
    objects = sorted(p.name for p in (tmp_path / "cache").rglob("*.o"))
    assert objects == sorted(Path(n).stem + ".o" for n in linked)

    out = compiled.export(tmp_path / "export")
    shipped = sorted(p.name for p in out.glob("kiln_*.c"))
    assert shipped == linked
    makefile = (out / "Makefile").read_text()
    words = makefile.split("SOURCES =")[1].split("OBJECTS")[0].replace("\\", " ").split()
    assert words == ["model.c", *linked]
    if shutil.which("make") is not None:
        subprocess.run(["make", "-s", "example", "EXTRA_CFLAGS=-Werror"], cwd=out, check=True,
                       capture_output=True)
        assert (out / "example").is_file()
