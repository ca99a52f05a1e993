"""Training: data loading, model selection, the report. Needs the train extra (scikit-learn, pandas)."""
