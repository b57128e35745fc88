"""Numerical kernels and selectors the analyses are built from, model-agnostic and registered
nowhere:

- :mod:`~vidinterp.kernels.tokens`: visual tokens by frame, attended key slots;
- :mod:`~vidinterp.kernels.cluster_scores`: separation scores of latent frames per head;
- :mod:`~vidinterp.kernels.spectral`: the matrix-free ``|lambda2|`` solver of attention chains;
- :mod:`~vidinterp.kernels.heads`: head selectors (which heads of a visit a method keeps);
- :mod:`~vidinterp.kernels.surrogate`: surrogate-token selectors (QK peak, highest norm);
- :mod:`~vidinterp.kernels.transfer`: small host-made tensors to the model's device without a
  host synchronisation.
"""
