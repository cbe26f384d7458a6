"""Model evaluation: the paper's pixel metrics, ROC/AUC, score agreement, comparison tables."""
