"""Diffusion: noise schedules, samplers (DDPM/DDIM) and the SR3 objective."""
