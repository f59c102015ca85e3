"""The local stack the project starts itself (see docs/ARCHITECTURE.md).

``from streams.infra import LocalKafka`` works; the import is lazy so that
``python -m streams.infra.broker`` does not load the module twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.infra.broker import ADMIN_USER, LocalCluster, LocalKafka, SaslUser

__all__ = ["ADMIN_USER", "LocalCluster", "LocalKafka", "SaslUser"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from streams.infra import broker

        return getattr(broker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
