"""Where results go: the Kafka hand-off (valid topics, DLQ), later ClickHouse and the lake."""
