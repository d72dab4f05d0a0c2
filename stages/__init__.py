"""One thin module per DVC stage. Importing the package pins CPU numerics (params.yaml
``numerics``) before any stage imports torch, so every stage computes the same bits on any machine."""

from onereward.numerics import pin_from_params

pin_from_params()
