"""TF-MOT weight clustering: each chosen kernel is pulled to ``clusters`` shared values, fine-tuned,
and stripped; from a pruned model the zeros stay zeros (sparsity-preserving clustering)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..core.errors import PipelineError, short
from ..core.framework import keras, tfmot
from ..core.params import ClusterParams, TrainParams
from ..data import Dataset
from ..training import distribute
from ..training.distill import TeacherFile
from ..training.fit import fit_target, seed_everything
from ..training.resume import Diverged, divergence_hint, fit_resumable
from . import wrapped_copy

clustering = tfmot.clustering.keras
CLUSTERABLE = ("Conv2D", "Dense", "DepthwiseConv2D")
INITS = {"kmeans_plus_plus": "KMEANS_PLUS_PLUS", "linear": "LINEAR", "density_based": "DENSITY_BASED",
         "random": "RANDOM"}


def _kernel(layer):
    return layer.depthwise_kernel if type(layer).__name__ == "DepthwiseConv2D" else layer.kernel


def chosen_layers(model, c: ClusterParams) -> list[str]:
    """The layers to cluster: those ``c.layers`` names, or every clusterable layer of at least
    ``c.min_weights`` kernel weights. One line for a name that is not a clusterable layer, a kernel
    with fewer weights than clusters, or a choice that leaves nothing to cluster."""
    clusterable = {layer.name: layer for layer in model.layers if type(layer).__name__ in CLUSTERABLE}
    if c.layers:
        unknown = [name for name in c.layers if name not in clusterable]
        if unknown:
            raise PipelineError(f"cluster.layers: {short(unknown[0])} is not a {', '.join(CLUSTERABLE)} layer of "
                                f"{model.name}; its clusterable layers: {', '.join(clusterable)}")
        names = list(c.layers)
    else:
        names = [name for name, layer in clusterable.items() if _kernel(layer).shape.num_elements() >= c.min_weights]
    if not names:
        raise PipelineError(f"cluster: no layer of {model.name} has at least cluster.min_weights ({c.min_weights:,}) "
                            "kernel weights; lower it, or name the layers in cluster.layers (`mobiledeploy summary` "
                            "lists each layer's weights)")
    for name in names:
        size = _kernel(clusterable[name]).shape.num_elements()
        if size <= c.clusters:
            raise PipelineError(f"cluster: layer {name} has {size} kernel weights, no more than cluster.clusters "
                                f"({c.clusters}): nothing to share; leave it out or lower the clusters")
    return names


def distinct_values(model, names: list[str]) -> dict[str, int]:
    """Distinct kernel values of each named layer (a clustered kernel: at most its clusters, and a zero)."""
    return {name: int(np.unique(_kernel(model.get_layer(name)).numpy()).size) for name in names}


def cluster_model(model, data: Dataset, c: ClusterParams, seed: int, preserve_sparsity: bool,
                  state_dir: Path | None = None, key: str = "", train_p: TrainParams = TrainParams(),
                  teacher: TeacherFile | None = None):
    """Cluster the chosen layers of ``model`` (unchanged), fine-tune for ``c.epochs`` at
    ``c.learning_rate`` decayed along a cosine, distilled from ``teacher`` if given; return (stripped
    model, names of the clustered layers, KeepBest). With ``preserve_sparsity`` zero weights stay zero."""
    names = set(chosen_layers(model, c))
    strategy = distribute.start(train_p.distribute)
    seed_everything(seed)
    steps = math.ceil(len(data.x_train) / c.batch_size)
    feed = distribute.datasets(strategy, data, c.batch_size, seed, "cluster.batch_size")
    init = getattr(clustering.CentroidInitialization, INITS[c.init])

    def wrap(layer):
        if layer.name not in names:
            return layer
        return clustering.cluster_weights(layer, number_of_clusters=c.clusters, cluster_centroids_init=init,
                                          preserve_sparsity=preserve_sparsity)

    with strategy.scope():
        net = distribute.replica(model, strategy, train_p.sync_batchnorm)
        wrapped = wrapped_copy(net, wrap)
        target = fit_target(wrapped, data, train_p, keras.optimizers.schedules.CosineDecay(
            c.learning_rate, steps * c.epochs), teacher.load(data) if teacher else None)
    keep = fit_resumable(target, feed, c.epochs, state_dir, key, strategy=strategy, callbacks=[Diverged(
        "clustering's fine-tuning", divergence_hint(data.tasks, "cluster.learning_rate"))])
    stripped = distribute.local_copy(clustering.strip_clustering(wrapped), strategy)
    return stripped, sorted(names), keep
