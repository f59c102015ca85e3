"""Where an input record came from: its topic, partition and offset.

Shared by the policy (audit and dead-letter records name a decision's source, R16/R17)
and the plumbing (the runtime builds one per consumed record), so it belongs to neither:
the plumbing never imports the policy, and the policy never imports Kafka.
"""

from __future__ import annotations

from typing import NamedTuple


class Source(NamedTuple):
    """A record's coordinates. A NamedTuple: the runtime builds one per consumed record."""

    topic: str
    partition: int
    offset: int

    @property
    def id(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"
