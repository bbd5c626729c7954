"""video-rnn: decode → frozen MobileNetV2 features cached in HDF5 → light heads (linear, RNN)."""

__version__ = "0.1.0"
