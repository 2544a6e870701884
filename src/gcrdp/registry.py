"""A tiny name → factory registry, used for datasets (``DATASETS``), image and text encoders
(``IMAGE_ENCODERS``, ``TEXT_ENCODERS``) and methods (``METHODS``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually factories). Unknown names raise a :class:`ConfigError`
    that lists the known ones.

    >>> r = Registry[int]("number")
    >>> r.register("one")(1)
    1
    >>> r.get("one")
    1
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        key = name.lower()

        def deco(obj: T) -> T:
            if key in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        key = str(name).lower()
        if key not in self._items:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise ConfigError(f"Unknown {self.kind} {name!r}. Known {self.kind}s: {known}.")
        return self._items[key]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
