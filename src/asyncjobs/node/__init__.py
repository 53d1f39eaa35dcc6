"""The node: the scheduler that claims, runs and completes jobs."""
