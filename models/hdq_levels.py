"""The levels of an hdq file and their geometry, shared by the network
(:mod:`~dqcodec.models.hdq_codec`, torch) and the light runtime (:mod:`~dqcodec.models.hdq_runtime`)."""

FLAT, COARSE, FINE = "flat", "coarse", "fine"  # level names, in coding order (a refinement level follows)
FINE_STRIDE = 16  # pixels per fine position along each axis
COARSE_FACTOR = 4  # fine positions per coarse position along each axis (stride 64)
