"""video-rnn: decode → frozen MobileNetV2 features cached in HDF5 → light heads (linear, RNN)."""

from pipeline import keras_imports

keras_imports.install()  # before anything imports Keras: see pipeline/keras_imports.py

__version__ = "0.1.0"
