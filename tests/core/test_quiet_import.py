"""TensorFlow's import-time absl/oneDNN lines stay off stderr (they precede a command's one-line error on CPUs
where TensorFlow turns oneDNN on, and TF_CPP_MIN_LOG_LEVEL does not reach them); anything else is kept."""
from __future__ import annotations

import subprocess
import sys

from siamese_core import quiet_import

NOISY = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
         "I0000 00:00:1796121486.441063   15814 port.cc:153] oneDNN custom operations are on. You may see slightly "
         "different numerical results due to floating-point round-off errors from different computation orders.\n")


def _stderr_of(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return proc.stderr


def test_drop_noise_keeps_every_other_line_in_order() -> None:
    assert quiet_import.drop_noise("a\n" + NOISY + "b\n" + NOISY) == "a\nb\n"


def test_what_the_c_level_stderr_gets_while_filtered_is_written_back_without_the_noise() -> None:
    err = _stderr_of("import os\nfrom siamese_core.quiet_import import _stderr_filtered\n"
                     f"with _stderr_filtered():\n    os.write(2, b'kept 1\\n' + {NOISY.encode()!r} + b'kept 2\\n')\n")
    assert err == "kept 1\nkept 2\n"


def test_importing_tensorflow_after_siamese_core_prints_nothing() -> None:
    err = _stderr_of("import siamese_core\nimport tensorflow as tf\nassert float(tf.reduce_sum(tf.ones(3))) == 3.0\n"
                     "import sys\nsys.stderr.write('done\\n')\n")
    assert err == "done\n", err
