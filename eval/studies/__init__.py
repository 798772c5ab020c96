"""The papers' studies, reproduced: ``dqcodec study NAME`` (:mod:`.commands`).

One driver module per study (:mod:`.static_prior`, :mod:`.channel_density`,
:mod:`.soft_vqvae`) beside the toy data, toy models and fits that only the studies use. The
studies may use ``dqcodec.models`` and ``dqcodec.train``; nothing but the ``dqcodec`` command
imports them.
"""
