"""``python -m benchmarks``: the service and the gateway measured against their baselines in one run.

Scenarios (each against its baseline, in the same run): per-run overhead, concurrent streams and event
latency, watchers against a bare grpc.aio echo, output transfer, and the media gateway against nginx.
See ``python -m benchmarks --help``.
"""
