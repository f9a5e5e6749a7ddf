"""The tools: one module per command that works on a trained model or a config (``spin fuse``,
``export``, ``stats``, ``predict``, ``bench``, ``analyze``). They sit above the models and the
engine and below :mod:`spin.cli`; nothing in the library core imports them."""
