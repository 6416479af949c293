"""The benchmark suite of issue 7: every figure beside a baseline measured in the same run.

Run it with ``make bench`` (or ``make bench-quick``); ``bench/README.md`` says what each
figure means. Nothing here is imported by the service.
"""
