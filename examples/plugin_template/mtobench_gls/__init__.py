"""An example mtobench method plugin: the geometric loss strategy (GLS)."""

from mtobench_gls.gls import GLS, gls_weights

__all__ = ["GLS", "gls_weights"]
