"""The transactional loop's own bookkeeping, with in-process stand-ins for its two clients.

What the broker does (transactions, fencing, exactly once across a SIGKILL) is tested on
the real broker in tests/integration; here only what the loop decides to write again.
"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from streams.kafka import transactional
from streams.kafka.runtime import ConsumedRecord
from streams.kafka.transactional import LoopConfig, Output, TransactionalLoop, Unavailable


class _Producer:
    """Records what each transaction wrote; the first ``aborts`` commits must be aborted."""

    def __init__(self, aborts: int) -> None:
        self.aborts = aborts
        self.open: list[tuple[str, Any, Any]] = []
        self.written: list[tuple[str, Any, Any]] = []

    def begin_transaction(self) -> None:
        self.open = []

    def produce(self, topic: str, key: Any = None, value: Any = None, **_: Any) -> None:
        self.open.append((topic, key, value))

    def send_offsets_to_transaction(self, *_: Any) -> None:
        pass

    def commit_transaction(self, *_: Any) -> None:
        if self.aborts:
            self.aborts -= 1
            raise KafkaException(KafkaError(KafkaError._STATE, "abort", txn_requires_abort=True))
        self.written.extend(self.open)

    def abort_transaction(self, *_: Any) -> None:
        self.open = []


class _Consumer:
    """Hands out one batch; seeking back to the committed offset hands it out again."""

    def __init__(self, batch: list[ConsumedRecord]) -> None:
        self.batch = batch
        self.queue = [batch]

    def consume(self, *_: Any) -> list[ConsumedRecord]:
        return self.queue.pop(0) if self.queue else []

    def consumer_group_metadata(self) -> object:
        return object()

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("requests", 0)]

    def committed(self, partitions: list[TopicPartition], **_: Any) -> list[TopicPartition]:
        return [TopicPartition("requests", 0, 0)]

    def seek(self, _: TopicPartition) -> None:
        self.queue = [self.batch]


class _Processor:
    """Reports one bad control record on its first refresh, and routes every input."""

    def __init__(self) -> None:
        self.reported = False

    def refresh(self) -> list[Output]:
        if self.reported:
            return []
        self.reported = True
        return [Output("dead-letters", "data-controls-0@7", b"bad control record")]

    def process(self, message: Message) -> list[Output]:
        return [Output("log-store", message.key(), message.value())]


def test_R17_a_dead_letter_from_state_survives_an_aborted_transaction() -> None:
    """R17: outputs of ``refresh`` belong to no input offset, so an aborted batch's are
    written with the next batch (re-reading the inputs would not bring them back), once."""
    loop = TransactionalLoop(LoopConfig("127.0.0.1:9", "group", "txn", ["requests"]), _Processor())
    loop.consumer.close()
    producer, consumer = (
        _Producer(aborts=1),
        _Consumer([ConsumedRecord("requests", 0, 0, b"r-1", b"v")]),
    )
    loop.producer, loop.consumer = producer, consumer  # type: ignore[assignment]

    loop.step()  # the commit is aborted: nothing written, back to the committed offset
    assert producer.written == [] and loop.transactions == 0
    loop.step()
    loop.step()  # nothing new: nothing written twice
    assert sorted(producer.written) == [
        ("dead-letters", "data-controls-0@7", b"bad control record"),
        ("log-store", b"r-1", b"v"),
    ]


class _Unavailable(_Processor):
    """Cannot read what it needs for the first record, once."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def process(self, message: Message) -> list[Output]:
        if self.failures:
            self.failures -= 1
            raise Unavailable("log-store/0 not read up to 7 in time")
        return super().process(message)


def _loop(processor: _Processor, consumer: Any) -> tuple[TransactionalLoop, _Producer]:
    loop = TransactionalLoop(LoopConfig("127.0.0.1:9", "group", "txn", ["requests"]), processor)
    loop.consumer.close()
    producer = _Producer(aborts=0)
    loop.producer, loop.consumer = producer, consumer
    return loop, producer


def test_R16_a_turn_that_cannot_read_is_tried_again_in_process_and_written_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """R16: ``Unavailable`` drops the turn (nothing written) and the loop goes on: the
    record is decided again, and what ``refresh`` gave is written once, with it."""
    monkeypatch.setattr(transactional, "RETRY_AFTER_S", 0.0)
    consumer = _Consumer([ConsumedRecord("requests", 0, 0, b"r-1", b"v")])
    loop, producer = _loop(_Unavailable(), consumer)
    loop.step()
    assert producer.written == []
    loop.step()
    loop.step()
    assert sorted(producer.written) == [
        ("dead-letters", "data-controls-0@7", b"bad control record"),
        ("log-store", b"r-1", b"v"),
    ]


def test_a_fatal_consumer_error_ends_the_worker_to_be_restarted() -> None:
    """A fenced static member's consumer reports _FATAL with ``fatal()`` false
    (confluentinc/librdkafka#3437): the worker exits instead of idling with a dead consumer."""

    class _Fatal(_Consumer):
        def consume(self, *_: Any) -> list[Any]:
            return [_ErrorMessage(KafkaError(KafkaError._FATAL, "fenced"))]

    loop, _ = _loop(_Processor(), _Fatal([]))
    with pytest.raises(KafkaException):
        loop.step()


class _ErrorMessage:
    def __init__(self, error: KafkaError) -> None:
        self._error = error

    def error(self) -> KafkaError:
        return self._error


def test_R4_an_aborted_turns_punctuator_writes_are_in_hand_while_the_stores_restore() -> None:
    """R4/R5: the runtime stages an aborted turn's punctuator writes (their changelog
    records are among its unwritten outputs) into the stores it restores during the next
    ``refresh``: they must be in hand then, or a deletion is decided and written again."""

    class _Seeing(_Processor):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[list[Output]] = []

        def refresh(self) -> list[Output]:
            self.seen.append(list(loop._unwritten))
            return super().refresh()

    processor = _Seeing()
    loop, producer = _loop(processor, _Consumer([ConsumedRecord("requests", 0, 0, b"r-1", b"v")]))
    producer.aborts = 1
    loop.step()  # aborted
    loop.step()
    assert processor.seen == [
        [],
        [Output("dead-letters", "data-controls-0@7", b"bad control record")],
    ]
    assert producer.written.count(("dead-letters", "data-controls-0@7", b"bad control record")) == 1
