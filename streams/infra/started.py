"""What every local service the project starts shares: ``with`` starts it and stops it."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Started:
    """A service with ``start()`` (returning itself once ready) and ``stop()``."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
