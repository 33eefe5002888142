"""A bounded map that forgets the least recently written key first: the join memory of
the services that label feedback with the model of the response it judges (alerting,
drift). Feedback and responses are both keyed by request_id with the same partition
count, so the response a feedback item is about was consumed by the same worker.

>>> m = RecentMap(2); m.put("a", 1); m.put("b", 2); m.put("c", 3)
>>> sorted(m)
['b', 'c']
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class RecentMap(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
