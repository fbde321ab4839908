"""The fpga target's C-simulation: g++ build into the content-addressed cache, batch runs.

The cache key covers every generated file, the flags and the compiler's version line, so a
second compile of the same model runs no compiler. A failed build's folder (with
`csim_build.log`) stays under `<cache>/failed/<key>/` and the `CompileError` names the log.
With `sanitize=True` the program is built with AddressSanitizer and UBSan
(`SANITIZE_FLAGS`, non-recoverable: the first finding aborts) and any sanitizer report during a
run is a `KilnError`; the flags are part of the cache key. With `ap_types=<folder holding
ap_int.h>` the same sources build against the vendor's arbitrary-precision types
(`-DKILN_USE_AP_TYPES`: `ap_int<W>` raws and `hls_stream.h`, what Vitis synthesizes; `AP_FLAGS`
silence the vendor headers' own warnings), which must give the same bits as the native build.
One run feeds many samples: the host writes raw input integers one sample per line
(`kiln.codegen.hls.project` describes the protocol), the program writes the output raws.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kiln.codegen.hls.project import AP_FLAG, CXXFLAGS
from kiln.errors import KilnError
from kiln.targets.cache import BuildCache, cache_key
from kiln.targets.toolchains import gxx

_CACHE_FORMAT = "kiln-hls-csim-1"
SANITIZE_FLAGS = ("-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer", "-g")
AP_FLAGS = (AP_FLAG, "-w")


@dataclass(frozen=True)
class Csim:
    """A built C-simulation program and the folder its build log lives in."""

    binary: Path
    n_out: int
    sanitized: bool = False

    @property
    def log(self) -> Path:
        return self.binary.parent / "csim_build.log"

    def run(self, raws: np.ndarray) -> np.ndarray:
        """Rows of input raws (one sample each) → rows of output raws."""
        with tempfile.TemporaryDirectory(prefix="kiln-csim-") as tmp:
            src, dst = Path(tmp) / "in.dat", Path(tmp) / "out.dat"
            np.savetxt(src, np.atleast_2d(raws), fmt="%d")
            result = gxx.run([str(self.binary), str(src), str(dst)])
            if self.sanitized and ("Sanitizer" in result.stderr
                                   or "runtime error" in result.stderr):
                raise KilnError(f"the sanitized C-simulation {self.binary} reported a "
                                f"finding (exit {result.returncode})",
                                hint=result.stderr.strip()[-2000:])
            if result.returncode != 0:
                raise KilnError(f"the C-simulation {self.binary} failed "
                                f"(exit {result.returncode}): {result.stderr.strip()[-300:]}")
            out = np.loadtxt(dst, dtype=np.int64, ndmin=2)
        return out.reshape(-1, self.n_out)


def build_csim(files: dict[str, str], name: str, n_out: int, cache_dir: str | None,
               cxx: str = "g++", sanitize: bool = False, ap_types: str | None = None) -> Csim:
    """Build (or find in the cache) the C-simulation of the project `files`; `ap_types`:
    build with the vendor's ap_int.h from that folder (module docstring)."""
    toolchain = gxx.find(cxx)
    sources = sorted(k for k in files if k.startswith("firmware/") or k == f"tb_{name}.cpp")
    parts = [f"{k}\n{files[k]}" for k in sources]
    if ap_types is not None and not (Path(ap_types) / "ap_int.h").is_file():
        raise KilnError(f"ap_types={ap_types!r} holds no ap_int.h",
                        hint="pass the folder of the vendor's headers (Vitis include/, or "
                             "hls4ml's templates/vivado/ap_types)")
    ap = (*AP_FLAGS, "-isystem", str(Path(ap_types).resolve())) if ap_types else ()
    flags = [*CXXFLAGS.split(), *(SANITIZE_FLAGS if sanitize else ()), *ap, "-Ifirmware"]
    key = cache_key(_CACHE_FORMAT, toolchain.version, " ".join(flags), *parts)
    cache = BuildCache(cache_dir)

    def compile_into(work: Path) -> None:
        for rel in sources:
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_text(files[rel])
        gxx.build(toolchain, work, [f"tb_{name}.cpp", f"firmware/{name}.cpp"], "csim", flags)

    entry = cache.get(key, compile_into, ["csim"])
    return Csim(entry / "csim", n_out, sanitize)


__all__ = ["AP_FLAGS", "SANITIZE_FLAGS", "Csim", "build_csim"]
