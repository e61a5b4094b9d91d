"""Producing and reading topics in tests, through the real broker."""
from __future__ import annotations

import time
import uuid
from typing import Callable

from confluent_kafka import Consumer, Producer

from billing import codec
from billing.kafka import consumer_config, producer_config


def produce(settings, topic: str, messages: list[tuple[bytes | str | None, bytes]], headers=None) -> None:
    producer = Producer(producer_config(settings))
    for key, value in messages:
        producer.produce(topic, key=key, value=value, headers=headers)
    assert producer.flush(30) == 0


def command(tenant_id: str, subscription_id: str, branch: str, body: dict, command_id: str | None = None) -> bytes:
    return codec.encode(codec.Schema.SUBSCRIPTION_COMMAND, {
        "command_id": command_id or str(uuid.uuid4()), "tenant_id": tenant_id, "subscription_id": subscription_id,
        "issued_at_us": int(time.time() * 1_000_000), "actor": "test",
        "command": (f"billing.v1.{branch}", body),
    })


class TopicReader:
    """Reads a topic from the beginning with its own group, accumulating what it saw."""

    def __init__(self, settings, topic: str):
        self.consumer = Consumer(consumer_config(settings, f"test-reader-{uuid.uuid4()}"))
        self.consumer.subscribe([topic])
        self.messages = []

    def until(self, predicate: Callable[[list], bool], timeout_s: float = 60) -> list:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.messages):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; saw {len(self.messages)} messages")
            for msg in self.consumer.consume(500, timeout=0.5):
                if msg.error() is None:
                    self.messages.append(msg)
        return self.messages

    def close(self) -> None:
        self.consumer.close()


class running_roles:
    """`async with running_roles(settings, ("billing", "relay")) as svc:` the service's Kafka
    roles in this process (own HTTP port), stopped gracefully on exit."""

    def __init__(self, settings, roles: tuple[str, ...]):
        from billing.devstack import free_port
        from billing.runtime import Service

        self.service = Service(settings.model_copy(update={"http_port": free_port()}), roles=roles)

    async def __aenter__(self):
        await self.service.start()
        return self.service

    async def __aexit__(self, *exc) -> None:
        await self.service.stop()


async def wait_until(predicate, timeout_s: float = 60):
    """Await `predicate()` until it returns something truthy; fail after `timeout_s`."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = await predicate()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.2)
