"""Job stores: the ``Store`` protocol and its Postgres and in-memory implementations."""
