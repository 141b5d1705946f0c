"""The MLflow pyfunc, logged as "models from code": this file is stored with the model, so the wrapper is
never pickled. Weights (safetensors) and preprocessing (JSON) arrive as artifacts. Models stored by earlier code
keep their own copy of this file (class RNNForecastModel) and import `rnn_pipeline.bundle.load_bundle`, which must
stay where it is."""

import mlflow
from mlflow.pyfunc import PythonModel


class RNNPipelineModel(PythonModel):
    """A forecaster or a classifier: the bundle answers."""

    def load_context(self, context):
        from rnn_pipeline.bundle import load_bundle

        self.bundle = load_bundle(context.artifacts["preprocess"], context.artifacts["weights"])

    def predict(self, context, model_input, params=None):
        """Forecasting: rows of history (optionally grouped by `window_id`) -> H-step forecasts in original units.
        Classification: texts, or a long table of sequence steps -> label and class probabilities."""
        return self.bundle.predict_frame(model_input)


mlflow.models.set_model(RNNPipelineModel())
