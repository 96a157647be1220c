"""Let OpenBLAS's idle threads sleep as soon as a matrix product ends.

Import this module before numpy: it sets ``OPENBLAS_THREAD_TIMEOUT=4`` unless
the environment already sets it, and OpenBLAS reads the variable once, when
numpy loads it.  Imported later, it changes nothing.  The ``mlp_cv`` and
``mlp_train`` stages and ``bench/mlp.py`` import it first.

Why: after a product run on several threads, OpenBLAS keeps its worker threads
spinning, waiting for the next product, for 2**28 clock cycles (about 0.1 s
here) before they sleep.  A training step of the default 64-unit perceptron
runs products of a fraction of a millisecond between stretches of
single-threaded, memory-bound work (drawing and converting the batch, the
momentum step), so the workers never sleep during training.  On this 2-core
virtual machine the spinning worker slowed that work three- to fourfold for
stretches of seconds to minutes (an epoch took about 0.72 s instead of 0.37 s
while its products took 0.26 s), and the slowdown went away with one BLAS
thread.  With the timeout at its minimum, 2**4 cycles, the workers sleep
right after each product and wake for the next one, which costs the products
little (``bench/README.md`` gives the figures).

Products of the distance and kNN stages run for seconds at a time, so the
setting does not matter to them.  It can go when the OpenBLAS that numpy ships
no longer spins idle threads for that long, or when training no longer
alternates short threaded products with work on one thread.
"""

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
