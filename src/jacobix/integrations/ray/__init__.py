"""The Ray backend of batch generation, on Ray Data (optional: ``pip install 'jacobix[ray]'``).

:class:`RayBatchGenerator` goes straight into ``ray.data.Dataset.map_batches`` with an actor
pool (one model per actor); :func:`run_ray` is what ``jacobix generate-batch --backend ray`` runs.
Ray itself is imported only when one of them is used.
"""

from jacobix.integrations.ray.backend import (INSTALL_HINT, RayBatchGenerator, actor_pool, check_resources, require_ray,
                                              run_ray)

__all__ = ["INSTALL_HINT", "RayBatchGenerator", "actor_pool", "check_resources", "require_ray", "run_ray"]
