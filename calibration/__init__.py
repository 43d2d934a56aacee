"""Measurement code (installs as ``qtsim.calibration``).

bitsandbytes >= 0.48 on a CPU with AVX512-BF16 tries, when it is imported, to download a fused
4-bit GEMM from the Hugging Face Hub through the optional ``kernels`` package, and logs a
warning ("... `pip install kernels` ...") when it cannot. qtsim does not add ``kernels`` to the
calibrate extra: it would make what is measured depend on a binary fetched at run time (and on
network access, which CI machines lack), and bitsandbytes' own CPU path is what a plain install
runs. The warning is therefore noise here, and it tears through the progress bar, so the filter
below drops that one message (every other bitsandbytes warning still shows). Without
``kernels`` bitsandbytes runs its built-in CPU path; its version is recorded with every point.
"""

import logging


class _NoKernelsHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pip install kernels" not in str(record.msg)


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NoKernelsHint())
