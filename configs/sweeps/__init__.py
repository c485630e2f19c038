"""Sweeps: `python -m restorejax.sweep --config=... --sweep=configs/sweeps/NAME.py[:ARG]`, each a
`get_sweep(arg) -> [(name, {dotted.key: value})]` of variants run with the same steps and seed."""
