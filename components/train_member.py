from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.base import component


@component
def train_member(
    member: str,
    dataset: Input[Dataset],
    train_config: str,
    mlflow_run_id: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Train one stage's ensemble members on the train split (neural ones early-stopped on validation weighted F1):
    text (vocabulary + LSTM, and the optional tfidf / chartfidf members) or image (a new head on the frozen
    backbone); with ensemble_folds K, also their out-of-fold probabilities."""
    from rakuten_mm import steps

    steps.train_member(member, dataset.path, model.path, train_config=train_config, mlflow_run_id=mlflow_run_id,
                       tracking_uri=mlflow_tracking_uri, experiment=mlflow_experiment,
                       log_metric=metrics.log_metric, metadata=model.metadata)
