"""Adapters that carry a mechanism out of Python: ONNX export (:func:`export_onnx`).

An adapter layer: it uses the mechanism classes' contract (``_forward(params, ...)``, metadata) and
never a kernel directly, so the one formula of each mechanism is what gets exported.
"""

from __future__ import annotations

from ._onnx import ExportInfo, export_onnx, export_status

__all__ = ["export_onnx", "export_status", "ExportInfo"]
