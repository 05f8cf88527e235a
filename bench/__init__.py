"""The benchmark suite: ``make bench`` (``python -m bench`` from the repository root).

Every benchmark prints ratios against floors measured in the same run and asserts nothing; see
bench/__main__.py. This package is also imported by the benchmarks' servers (``bench.site``,
``bench.hello``), so it imports nothing here.
"""
