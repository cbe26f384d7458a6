"""her2kit: HER2 immunohistochemistry scoring.

Importing the package is cheap: torch and the native extension load only when
a module that needs them (``her2kit.ops``, ``her2kit.models``) is imported.
"""

__version__ = "0.1.0"

from her2kit.errors import Her2kitError, InputError

__all__ = ["__version__", "Her2kitError", "InputError"]
