"""HLS C++ code generation for the fpga target (see `emitter`)."""

from kiln.codegen.hls.emitter import HlsOptions, emit, emit_lowered
from kiln.codegen.hls.layers import HlsLayer, HlsTensor, Lowered, lower

__all__ = ["HlsLayer", "HlsOptions", "HlsTensor", "Lowered", "emit", "emit_lowered", "lower"]
