"""The consumer runtime: small steps that each hand on to a ``next_step``, in the spirit
of getsentry/arroyo's processing strategies, driven by one :class:`StreamProcessor`.

    Records (one partition's messages, in offset order)
      -> DecodeStep      decode with the topic's codec, validate/transform (pure);
                         invalid -> the DeadLetterPolicy (acknowledgement awaited
                         before the offset is committed)
      -> BatchStep       by size or age                      (ingest)
      -> SinkStep        write with retry, partitions paused while it fails
      -> CommitStep      dead letters acknowledged, then offsets committed

      -> ConcurrentStep  bounded concurrent work, offsets committed up to the longest
                         finished prefix of each partition  (the inference bridge)
      -> RunTaskStep     one record at a time, then commit     (retraining's evidence)

Every step has ``submit`` (take work), ``poll`` (time-based work, e.g. a batch's age)
and ``join`` (finish what was taken, before a stop or a rebalance), and is unit-tested
with a recording next step (``tests/unit/test_runtime_steps.py``). A service is
configuration of these steps (see :class:`services.common.pipeline.Pipeline`).
"""

from services.common.runtime.batch import BatchStep
from services.common.runtime.commit import CommitStep
from services.common.runtime.concurrent import ConcurrentStep
from services.common.runtime.decode import DecodeStep
from services.common.runtime.processor import StreamProcessor
from services.common.runtime.records import Batch, Chunk, Records, Step
from services.common.runtime.run_task import RunTaskStep
from services.common.runtime.sink import SinkStep, TransientError

__all__ = [
    "Batch",
    "BatchStep",
    "Chunk",
    "CommitStep",
    "ConcurrentStep",
    "DecodeStep",
    "Records",
    "RunTaskStep",
    "SinkStep",
    "Step",
    "StreamProcessor",
    "TransientError",
]
