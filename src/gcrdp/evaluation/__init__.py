"""Evaluation: retrieval metrics (pure functions) and, later, the protocol over seeds."""

from __future__ import annotations

from .metrics import (
    K_DENOMINATORS,
    SCORE_METRICS,
    SCORES_PER_CHUNK,
    average_precision,
    chance_map,
    cross_modal_metrics,
    instance_recall,
    precision_at_k,
    recall_at_k,
    relevance,
    retrieval_metrics,
)

__all__ = [
    "K_DENOMINATORS",
    "SCORE_METRICS",
    "SCORES_PER_CHUNK",
    "average_precision",
    "chance_map",
    "cross_modal_metrics",
    "instance_recall",
    "precision_at_k",
    "recall_at_k",
    "relevance",
    "retrieval_metrics",
]
