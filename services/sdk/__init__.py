"""Client side of Argus: what producers of inference requests use."""

from services.sdk.client import ArgusClient, ReplyTimeout
from services.sdk.producer import ArgusProducer

__all__ = ["ArgusClient", "ArgusProducer", "ReplyTimeout"]
