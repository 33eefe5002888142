"""The logging (ingest) service: Kafka -> ClickHouse. Its migrations define the
tables SREs query."""
