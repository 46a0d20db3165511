"""The vanilla Flower baseline of ``bench.federation``."""
