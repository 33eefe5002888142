"""Argus: an event-driven LLMOps platform.

Each subpackage is one service (``inference``, ``ingest``, ``drift``, ``alerting``,
``retraining``), the shared plumbing and consumer runtime they all use (``common``),
the contracts (``contracts``: ``schemas/`` and the default configs, shipped in the
wheel), the command line (``cli``), the producer SDK (``sdk``) or the local stack
(``stack``). Services talk only through Kafka topics and never import one another;
``docs/architecture.md`` draws the flow.
"""
