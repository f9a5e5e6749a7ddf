"""Benchmark spin's ConvMixers against timm's (same as ``spin bench``); see spin/bench.py.

    python bench/benchmark.py                       # 768/32/14/3 batch 8 and a CIFAR-size model, CPU
    python bench/benchmark.py --device cuda --amp bf16 --channels-last
"""
from spin.tools.bench import main

if __name__ == "__main__":
    main()
