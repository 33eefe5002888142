"""The lifecycle a request/response consumer shares (the inference bridge, the tenant
gateway): ``start()`` makes its consumer, producer and processor; ``run(stop)`` steps the
processor until ``stop`` is set (a failure of the last step stops it without committing
past it), then lets that step finish what it took and closes the clients."""

from __future__ import annotations

import asyncio
from typing import Any


class ConsumerService:
    consumer: Any = None
    producer: Any = None
    processor: Any = None  # StreamProcessor

    def last_step(self) -> Any:
        """The step whose ``join`` finishes the work taken (and commits it)."""
        raise NotImplementedError

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        try:
            step = self.last_step()
            if step is not None:
                await step.join()  # finishes what it took; commits unless something failed
        finally:
            if self.consumer is not None:
                await self.consumer.stop()
            if self.producer is not None:
                await self.producer.stop()

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        assert self.processor is not None
        try:
            while not stop.is_set():
                await self.processor.step()  # raises the last step's failure: nothing past it is committed
        finally:
            await self.stop()
