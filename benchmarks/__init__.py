"""attnkit benchmarks (issue 4): ``python -m benchmarks.run`` measures exact attention against torch's
``scaled_dot_product_attention`` and naive NumPy, memory at long sequences, the torch dispatch
overhead, neighbour attention and linear attention, and writes ``benchmarks/results/<name>.json``
plus a log-log plot. Benchmarks assert nothing; the tests live in ``tests/``.
"""
