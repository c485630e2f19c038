"""Run configurations: `--config=configs/NAME.py[:ARG]`, each a `get_config(arg) -> ConfigDict` (sweeps:
`configs/sweeps/NAME.py`, `get_sweep(arg)`). Installed with restorejax, so configs import each other
(`from configs import default`) from any working directory; `common.parse_arg` reads every `:ARG`.
"""
