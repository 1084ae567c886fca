"""Load tests of pruned against dense variants over HTTP (not built yet: issue 7).

Until then, `blockserve bench` measures dense vs compact in one process.
"""
