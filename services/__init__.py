"""Argus: an event-driven LLMOps platform.

Each subpackage is one service (``inference``, ``ingest``, ``drift``, ``alerting``,
``retraining``) or the shared plumbing they all use (``common``) or the local stack
(``stack``). Services talk only through Kafka topics whose contracts live in
``schemas/`` at the repository root.
"""
