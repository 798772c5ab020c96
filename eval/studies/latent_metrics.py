"""How well a set of latent vectors reflects class labels: clustering and linear separability.

- ``kmeans``: Lloyd's algorithm (:mod:`dqcodec.models.lloyd`) with k-means++ seeding and
  restarts (lowest inertia wins).
- ``clustering_accuracy``: accuracy of cluster ids under the best one-to-one mapping of
  clusters to classes (Hungarian matching on the contingency table).
- ``normalized_mutual_information``: I(U; V) / ((H(U) + H(V)) / 2), the arithmetic-mean
  normalisation (scikit-learn's default).
- ``linear_probe_accuracy``: multinomial logistic regression fitted on training vectors,
  accuracy on held-out ones.
- ``principal_components``: a 2-D (or n-D) PCA projection for plots.

All take torch tensors; vectors are (N, D) float, labels (N,) int64.
"""

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from dqcodec.models.lloyd import kmeans_plus_plus, lloyd, nearest_codes


def kmeans(points: torch.Tensor, k: int, generator: torch.Generator, restarts: int = 10, iterations: int = 100) -> torch.Tensor:
    """Cluster ids (N,) int64 in [0, k) of the best of ``restarts`` k-means runs.

    Args:
        points: (N, D) vectors, N >= k.
        k: number of clusters.
        generator: seeds the k-means++ draws (same generator state, same result).
        restarts: independent k-means++ starts (:func:`~dqcodec.models.lloyd.kmeans_plus_plus`);
            the run with the lowest inertia (sum of squared distances to the nearest centre)
            is returned.
        iterations: at most this many Lloyd steps per run (:func:`~dqcodec.models.lloyd.lloyd`;
            it stops early when the assignment settles). A centre that loses all its points
            keeps its position.
    Each point's cluster is its nearest centre of the winning run; distances are in float64.
    """
    if len(points) < k:
        raise ValueError(f"k-means needs at least k = {k} points, got {len(points)}")
    points = points.double()
    best_inertia, best_assignment = float("inf"), None
    for _ in range(restarts):
        centres = lloyd(points, kmeans_plus_plus(points, k, generator), iterations).centres
        assignment, squared_error = nearest_codes(points[None], centres[None])
        inertia = float(squared_error.sum())
        if inertia < best_inertia:
            best_inertia, best_assignment = inertia, assignment[0]
    return best_assignment


def _contingency(labels: torch.Tensor, clusters: torch.Tensor) -> np.ndarray:
    """(C, K) counts of points with class c in cluster k (C, K = number of distinct values)."""
    _, label_ids = torch.unique(labels, return_inverse=True)
    _, cluster_ids = torch.unique(clusters, return_inverse=True)
    table = np.zeros((int(label_ids.max()) + 1, int(cluster_ids.max()) + 1), dtype=np.int64)
    np.add.at(table, (label_ids.numpy(), cluster_ids.numpy()), 1)
    return table


def clustering_accuracy(labels: torch.Tensor, clusters: torch.Tensor) -> float:
    """Fraction of points whose cluster maps to their class under the best one-to-one mapping.

    The mapping maximises the matched count (Hungarian algorithm on the contingency table);
    with more clusters than classes the unmatched clusters count as wrong. In [0, 1].
    """
    table = _contingency(labels, clusters)
    rows, columns = linear_sum_assignment(table, maximize=True)
    return float(table[rows, columns].sum() / table.sum())


def normalized_mutual_information(labels: torch.Tensor, clusters: torch.Tensor) -> float:
    """NMI = I(U; V) / mean(H(U), H(V)) in [0, 1], nats cancel; 1 when both are a single group."""
    joint = _contingency(labels, clusters) / len(labels)
    label_marginal, cluster_marginal = joint.sum(1), joint.sum(0)
    nonzero = joint > 0
    mutual = (joint[nonzero] * np.log(joint[nonzero] / np.outer(label_marginal, cluster_marginal)[nonzero])).sum()
    entropies = [-(p * np.log(p)).sum() for p in (label_marginal, cluster_marginal)]
    mean_entropy = (entropies[0] + entropies[1]) / 2
    if mean_entropy == 0:
        return 1.0
    return float(max(mutual, 0.0) / mean_entropy)


def linear_probe_accuracy(
    train_vectors: torch.Tensor,
    train_labels: torch.Tensor,
    test_vectors: torch.Tensor,
    test_labels: torch.Tensor,
    weight_decay: float = 1e-4,
    iterations: int = 200,
) -> float:
    """Test accuracy of a multinomial logistic regression fitted on the training vectors.

    Features are standardised with the training mean and standard deviation; the weights
    (D, C) and biases (C,) start at zero and minimise the mean cross-entropy plus
    ``weight_decay * ||W||^2`` by full-batch L-BFGS (deterministic, no seed needed).
    """
    mean, std = train_vectors.mean(0), train_vectors.std(0).clamp_min(1e-6)
    train_x = ((train_vectors - mean) / std).double()
    test_x = ((test_vectors - mean) / std).double()
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    weight = torch.zeros(train_x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_labels) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    with torch.no_grad():
        predictions = (test_x @ weight + bias).argmax(1)
    return float((predictions == test_labels).double().mean())


def principal_components(vectors: torch.Tensor, count: int = 2) -> torch.Tensor:
    """(N, D) vectors -> (N, count) coordinates along the leading principal axes."""
    centred = vectors.double() - vectors.double().mean(0)
    _, _, axes = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ axes[:count].T).float()
