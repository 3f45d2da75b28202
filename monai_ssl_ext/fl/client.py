"""A FLARE site's side of federated training, through FLARE's Client API.

The job runs ``python -m monai_ssl_ext.fl.client`` at every site (the package is installed there; nothing of it
is copied into the job). The site finds its own entry in the sites file by the name FLARE gives it, checks its
manifest and data root before anything trains, builds the bundle's training with
:class:`~monai_ssl_ext.fl.algo.SemiSupervisedMonaiAlgo`, and then, per task from the server:

- ``train``: evaluates the global model on the site's validation split, trains one round from it and sends back
  the difference of the weights, with the validation metrics and the number of iterations trained;
- ``validate`` (cross-site evaluation): evaluates the model it is sent and returns the metrics.

    python -m monai_ssl_ext.fl.client --bundle BUNDLE --sites sites.json [--configs train.json,profiles/cpu.json]
        [--local_epochs 1] [--teacher global] [--fedprox_mu 0] [--settings '{"num_iterations": 600}']
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from monai_ssl_ext.bundle.runner import find_bundle
from monai_ssl_ext.fl.sites import check_site, load_sites

__all__ = ["SITES_ENV", "main"]

#: environment variable that names the sites file at a site, in place of the path written into the job
SITES_ENV = "MONAI_SSL_FL_SITES"

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a FLARE site's training of a monai_ssl_ext bundle")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--sites", required=True, help=f"the sites file (monai_ssl_ext.fl.sites); ${SITES_ENV} wins")
    parser.add_argument("--configs", default="train.json", help="comma-separated files under the bundle's configs/")
    parser.add_argument("--local_epochs", type=int, default=1)
    parser.add_argument("--teacher", default="global", choices=("global", "local"))
    parser.add_argument("--fedprox_mu", type=float, default=0.0, help="FedProx's proximal weight (0: FedAvg)")
    parser.add_argument("--settings", default="{}", help="bundle settings of every site, as a JSON object")
    args = parser.parse_args(argv)

    import nvflare.client as flare
    from monai.fl.utils.constants import ExtraItems, FlStatistics
    from monai.fl.utils.exchange_object import ExchangeObject
    from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

    from monai_ssl_ext.fl.algo import SemiSupervisedMonaiAlgo

    flare.init()
    name = flare.get_site_name()
    sites_file = os.environ.get(SITES_ENV) or args.sites  # a hospital points at its own copy of the file
    sites = load_sites(sites_file)
    if name not in sites:
        raise KeyError(f"site {name}: not in {sites_file} (sites there: {', '.join(sites)})")
    site = sites[name]
    check_site(site)
    settings = {**json.loads(args.settings), **site.bundle_settings()}
    # FLARE runs each site in its own workspace folder: the site's logs, history and checkpoints go there
    algorithm = settings.get("algorithm_name", "default")
    settings.setdefault("output_dir", str(Path.cwd() / "runs" / str(algorithm)))
    settings.setdefault("ckpt_dir", str(Path.cwd() / "models"))
    algo = SemiSupervisedMonaiAlgo(
        find_bundle(args.bundle),
        config_files=[f"configs/{c}" for c in args.configs.split(",")],
        settings=settings,
        local_epochs=args.local_epochs,
        teacher=args.teacher,
        fedprox_mu=args.fedprox_mu,
    )
    algo.initialize({ExtraItems.CLIENT_NAME: name})
    while flare.is_running():
        received = flare.receive()
        if received is None:
            break
        global_weights = ExchangeObject(weights=dict(received.params))
        metrics = {k: float(v) for k, v in algo.evaluate(global_weights).metrics.items()}
        logger.info(f"site {name}, round {received.current_round}: global model {metrics}")
        if flare.is_evaluate():
            flare.send(FLModel(metrics=metrics))
            continue
        algo.train(global_weights)
        update = algo.get_weights()
        steps = int(update.statistics.get(FlStatistics.NUM_EXECUTED_ITERATIONS, 0))
        flare.send(
            FLModel(
                params=update.weights,
                params_type=ParamsType.DIFF,
                metrics=metrics,
                meta={"NUM_STEPS_CURRENT_ROUND": steps},
            )
        )
    algo.finalize()


if __name__ == "__main__":
    main()
