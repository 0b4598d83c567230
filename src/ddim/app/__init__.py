"""The digits application built on the ``ddim`` library; the library never imports it.

- :mod:`ddim.app.digits`: the embedded digits model (data, network, weights, classifier, digits-FID, training);
- :mod:`ddim.app.evaluation`: the DDIM paper's Table 1 reproduced on that model;
- :mod:`ddim.app.shards`: sharded, resumable generation on one process or many (torchrun);
- :mod:`ddim.app.seeding`: the per-sample seed rule shared by ``ddim sample`` and the shards;
- :mod:`ddim.app.cli`: the ``ddim`` command line.
"""
