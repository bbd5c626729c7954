"""video-rnn: decode → frozen MobileNetV2 features cached in HDF5 → light RNN heads."""

__version__ = "0.1.0"
