"""Transitional alias: the element-wise helpers live in `safeops._core.elementwise`."""

from safeops._core.elementwise import fused as _fused  # noqa: F401

__all__ = []
