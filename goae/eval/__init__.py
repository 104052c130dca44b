"""`goae eval`: the inversion metrics of the published tables (MSE, LPIPS, SSIM, identity; identity across novel
views and FID), per image and on average, with a report. metrics.py (the formulas and conventions), networks.py
(LPIPS, IR-SE50, Inception; shared with training's losses), runner.py (`evaluate`), report.py, cli.py (`main`)."""
from goae.eval.runner import EvalOptions, MetricNetworks, evaluate, gather_inputs, load_networks

__all__ = ["EvalOptions", "MetricNetworks", "evaluate", "gather_inputs", "load_networks"]
