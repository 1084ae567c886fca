"""Load tests of pruned against dense variants over HTTP, client- and server-side (`blockserve loadtest`).

client.py   the load generator (closed loop, open loop with Poisson arrivals)
payloads.py request bodies cut from real text to an exact token length, or from a JSONL file
prometheus.py  /metrics scrapes, subtracted per window, and histogram quantiles
runner.py   the windows: levels × repeats × variants alternated, warm-up, server view per window
analysis.py percentiles, throughput, ratios at concurrency 1, max throughput under a p99 SLO
bench_ratio.py  `blockserve bench` for the same shapes
summary.py, report.py, plots.py  summary.json, report.md, requests.csv, PNGs
launch.py   start the service from a Serve config for a one-command run
stub.py     a stand-in service with set latencies, for testing the load generator
"""
