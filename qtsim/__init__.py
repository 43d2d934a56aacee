"""qtsim: will weight quantization save energy and time on this GPU, or trap you?

The planner side (this package's model functions, profiles and simulator) needs only numpy,
scipy and friends; torch, transformers and bitsandbytes load only inside
``qtsim.calibration`` measurement code.
"""

__version__ = "0.1.0"
