"""Federated semi-supervised training with NVIDIA FLARE: the sites' data stays at each site.

- :mod:`~monai_ssl_ext.fl.sites`: the sites file (each site's manifest, data root and label budget), checked
  before anything trains.
- :mod:`~monai_ssl_ext.fl.algo`: :class:`SemiSupervisedMonaiAlgo`, ``monai.fl``'s client algorithm for our
  bundles, with the policy for the algorithm state that lives outside the network.
- :mod:`~monai_ssl_ext.fl.client`: the site's side of a round through FLARE's Client API.
- :mod:`~monai_ssl_ext.fl.job`: a FedAvg (or FedProx) job for a bundle and a sites file
  (``monai-ssl fl_job``), run in FLARE's simulator or submitted to a federation.

``monai.fl`` and FLARE are imported by the modules that need them (the ``fl`` extra); this package imports
without them.
"""

from .sites import Site, check_site, load_sites

__all__ = ["Site", "check_site", "load_sites"]
