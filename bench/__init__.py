"""Benchmarks of the broker: offer overhead, tool dispatch latency, capacity, audit appends.

``make bench`` (``python -m bench``) runs all four and rewrites ``bench/RESULTS.md``,
``bench/dispatch.png`` and ``bench/results/*.json``; each also runs alone
(``python -m bench.<name> --preset smoke|medium|full``). Loopback only; every loop is
bounded in count and time. See ``bench/RESULTS.md`` for the method and the numbers.
"""
