"""Patch -> vector. The index stores a descriptor's name and parameters and rebuilds it on load.

A descriptor is a small object with ``name``, ``params`` (JSON-able), ``dim``,
``lossless_uint8`` and ``__call__(patches)``: (n, 32, 32, 3) uint8 RGB -> (n, dim) float32.
``lossless_uint8`` is True when the vector *is* the uint8 pixels (no scaling), so that the
index can re-rank candidates exactly with a lossless 8-bit code (``SQ8_direct``).

A conv-feature descriptor (the authors': VGG-16 conv1_2 features randomly projected to 5
channels, 32*32*5 = 5120 dims, L2-normalised) fits the same interface: add a class here and
an entry in ``DESCRIPTORS``.
"""
from __future__ import annotations

import numpy as np


class RawPixels:
    """Raw pixels: the (32, 32, 3) uint8 patch flattened in H, W, C order as float32, values 0..255.

    No normalisation: squared L2 between two descriptors is the squared pixel distance in
    the paper's units (0..255), which is what a patch composition should preserve, and the
    vectors are exactly representable by an 8-bit code. 3072 dims.
    """

    name = "raw"
    dim = 3072
    lossless_uint8 = True

    def __init__(self):
        self.params: dict = {}

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        patches = np.asarray(patches)
        if patches.dtype != np.uint8 or patches.shape[1:] != (32, 32, 3):
            raise ValueError(f"expected (n, 32, 32, 3) uint8 patches, got {patches.shape} {patches.dtype}")
        return patches.reshape(len(patches), -1).astype(np.float32)


DESCRIPTORS = {"raw": RawPixels}


def make_descriptor(name: str, params: dict | None = None):
    """Descriptor by name (and saved parameters); ValueError naming the known ones otherwise."""
    if name not in DESCRIPTORS:
        raise ValueError(f"unknown descriptor {name!r}; known: {', '.join(sorted(DESCRIPTORS))}")
    return DESCRIPTORS[name](**(params or {}))
