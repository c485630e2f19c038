"""restorejax.allocator: a jitted step's temporaries reuse freed pages instead of faulting in new ones."""

import subprocess
import sys
import textwrap

import pytest

# A fresh process (the arena setting must precede JAX's threads): the page faults of repeated runs of a
# NAFBlock's gradient, whose ~100 temporaries of 2-4 MiB XLA allocates and frees on its worker threads.
SCRIPT = textwrap.dedent("""
    import resource, sys
    from restorejax import allocator
    if sys.argv[1] == "keep":
      assert allocator.keep_freed_memory()
    import jax, jax.numpy as jnp
    from restorejax.models import nafnet
    x = jnp.ones((8, 64, 64, 16))
    block = nafnet.NAFBlock()
    params = block.init(jax.random.PRNGKey(0), x)
    f = jax.jit(jax.grad(lambda p, x: jnp.sum(block.apply(p, x) ** 2), argnums=(0, 1)))
    for _ in range(3):
      jax.block_until_ready(f(params, x))
    faults = []
    for _ in range(5):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      jax.block_until_ready(f(params, x))
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(min(faults))
""")


def fewest_faults_of_a_run(mode: str) -> float:
  out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True,
                       timeout=120)
  return float(out.stdout.strip().splitlines()[-1])


def test_keep_freed_memory_stops_page_faults_of_repeated_steps():
  plain = fewest_faults_of_a_run("plain")
  if plain < 4096:
    pytest.skip(f"this libc/XLA does not fault temporaries in afresh ({plain:.0f} faults per run)")
  # Without it the temporaries' pages are faulted in again on every run; with it they are reused.
  assert fewest_faults_of_a_run("keep") < plain / 10
