"""Reading clips and fitting them to a model's geometry, one job per module:

* :mod:`vidinterp.media.readers`: decoders behind one interface (PyAV video files, PIL animated
  and still images, folders of images, arrays), probing without keeping frames and decoding
  only the picked ones; :class:`~vidinterp.media.readers.VideoReadError`.
* :mod:`vidinterp.media.timing`: which frames a fitted clip keeps (evenly over its duration,
  nearest by time).
* :mod:`vidinterp.media.fitting`: one frame to a height and width (centre crop or pad, resize).
* :mod:`vidinterp.media.arrays`: arrays and tensors checked and converted to ``uint8`` RGB.

The public entry points are in :mod:`vidinterp.video`.
"""
