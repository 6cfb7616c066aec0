import os
import random

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A fresh seed per test, printed on failure (FLASHPREFILL_SEED fixes it)."""
    seed = int(os.environ.get("FLASHPREFILL_SEED", random.SystemRandom().randrange(2**32)))
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed} (rerun with FLASHPREFILL_SEED={seed})")
    return np.random.default_rng(seed)
