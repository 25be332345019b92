"""Forward-over-reverse HVPs print no warning: torch's lazily imported forward-mode
decompositions warn that ``torch.jit.script`` is deprecated (echoing a source line into the
job's log); ``hvp_forward_over_reverse`` imports them first with that one warning silenced."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import warnings
warnings.simplefilter("error")  # any warning fails the run
import torch
from optprobe.estimators.functional import hvp_forward_over_reverse
a = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
mv = hvp_forward_over_reverse(lambda p: 0.5 * p["x"] @ a @ p["x"], {"x": torch.ones(2)})
print(mv(torch.tensor([1.0, 0.0])).tolist())
"""


def test_forward_over_reverse_hvp_warns_nothing_and_is_right():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.strip() == "[2.0, 1.0]"  # H e_1 = A e_1
