"""The figure both kNN stages draw: accuracy against k, the chosen k marked.

``knn_cv`` draws the mean accuracy over the folds with error bars of one
standard deviation; ``knn_sweep`` draws the test accuracy.  Both mark the k
the pipeline chose with a red star whose legend gives its accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter


def accuracy_against_k(
    k_values: Sequence[int],
    accuracy: Sequence[float],
    chosen_k: int,
    *,
    chosen_label: str,
    ylabel: str,
    title: str,
    spread: Sequence[float] | None = None,
    curve_label: str | None = None,
) -> Figure:
    """Plot ``accuracy`` against ``k_values`` and star ``chosen_k``.

    ``spread``, when given, draws error bars of that half-height.  The star's
    legend is ``chosen_label`` followed by its accuracy in per cent.
    """
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.errorbar(
        k_values,
        accuracy,
        yerr=spread,
        marker="o",
        markersize=4,
        capsize=3,
        label=curve_label,
    )
    chosen = float(accuracy[list(k_values).index(chosen_k)])
    ax.plot(
        [chosen_k],
        [chosen],
        marker="*",
        markersize=14,
        linestyle="none",
        color="tab:red",
        label=f"{chosen_label} ({chosen:.2%})",
    )
    ax.set_xlabel("k (number of neighbours)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=1))
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
