"""ctypes mirrors of the structs of kiln's int8 VNNI runtime (`runtime/kiln_qvnni.h`), for the
kernel tests that call it through ctypes: one definition, so a field added in C is added here
once (the tests of the convolution, its store paths and the depthwise kernel share them)."""

from __future__ import annotations

import ctypes

import numpy as np


class Geom(ctypes.Structure):
    """`kiln_qgeom`: the packed input plane, the output plane, kernel, strides, dilations and
    bytes per packed pixel."""

    _fields_ = [(n, ctypes.c_int) for n in
                ("hp", "wp", "oh", "ow", "kh", "kw", "sh", "sw", "dh", "dw", "elem")]


class Requant(ctypes.Structure):
    """`kiln_requant`: bias, multipliers and shifts (per channel or one), output zero point,
    clamp and storage signedness."""

    _fields_ = [("bias", ctypes.c_void_p), ("mult", ctypes.c_void_p),
                ("shift", ctypes.c_void_p), ("per_channel", ctypes.c_int), ("zo", ctypes.c_int),
                ("lo", ctypes.c_int), ("hi", ctypes.c_int), ("out_unsigned", ctypes.c_int)]


def ptr(a: np.ndarray) -> ctypes.c_void_p:
    """A pointer to `a`'s data (the caller keeps `a` alive)."""
    return ctypes.c_void_p(a.ctypes.data)


__all__ = ["Geom", "Requant", "ptr"]
