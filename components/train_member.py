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
    """Train one ensemble member on the train split, early-stopped on validation weighted F1: text (vocabulary +
    LSTM, plus the optional tfidf member) or image (a new head on the frozen VGG16 base)."""
    from rakuten_mm import steps

    steps.train_member(member, dataset.path, model.path, train_config=train_config, mlflow_run_id=mlflow_run_id,
                       tracking_uri=mlflow_tracking_uri, experiment=mlflow_experiment,
                       log_metric=metrics.log_metric, metadata=model.metadata)
