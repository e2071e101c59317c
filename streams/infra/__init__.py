"""Local services for development and tests: a real Kafka cluster (one node or three,
PLAINTEXT or SASL_SSL) and Redis when asked."""
