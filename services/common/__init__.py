"""Plumbing every Argus service shares: settings, the schema registry and Avro codec,
Kafka I/O, the consumer pipeline with its dead-letter handling, the ClickHouse client
factory, structured logging, metrics and health endpoints."""
