"""The `blockserve` command: the one place that may import every part (nothing imports it)."""
