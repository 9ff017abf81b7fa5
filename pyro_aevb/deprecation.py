"""Old names kept as deprecated aliases, so that code written against them keeps working
while it warns (:class:`FutureWarning`, which Python shows by default) with the new name."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping


def warn_renamed(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated; use {new}", FutureWarning, stacklevel=3)


def renamed_method(new_name: str, old_name: str) -> Callable:
    """A method ``old_name`` that warns and calls ``self.new_name``."""

    def method(self, *args, **kwargs):
        warn_renamed(f"{type(self).__name__}.{old_name}", f"{type(self).__name__}.{new_name}")
        return getattr(self, new_name)(*args, **kwargs)

    method.__name__ = old_name
    method.__doc__ = f"Deprecated alias of :meth:`{new_name}`."
    return method


def module_getattr(module: str, renamed: Mapping[str, Callable[[], object]]) -> Callable:
    """A module ``__getattr__`` that resolves the old names of ``renamed`` (old name ->
    function returning the new object) with a warning."""

    def __getattr__(name: str):
        if name in renamed:
            value = renamed[name]()
            warn_renamed(f"{module}.{name}", f"{value.__module__}.{value.__qualname__}")
            return value
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
