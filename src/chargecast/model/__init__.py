"""The model as it ships: numpy only (features, predictors, the predictive distribution, the artifact)."""
