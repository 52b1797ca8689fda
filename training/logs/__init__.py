"""Logging workflow: corpora -> drafter/target passes -> features and labels in Arrow shards."""
