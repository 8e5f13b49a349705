"""Transitional alias of `safeops._core.dtypes` (removed once every module imports the core)."""

from safeops._core.dtypes import (FLOAT_DTYPES, accumulation_dtype, check_floating,  # noqa: F401
                                  convert_to_floating, dtype_name, scalar_in)

__all__ = []
