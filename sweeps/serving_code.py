"""The pyfunc model of every trial, logged as code (MLflow's "models from code"), not as a pickle.

`modelio` hands this file's path to ``mlflow.pyfunc.save_model(python_model=...)``; MLflow copies it into the
model directory and records it as the flavor's ``model_code_path``. ``mlflow.pyfunc.load_model`` and
``mlflow models serve`` run it to get the wrapper: it builds an empty `SiameseServingModel` from the installed
package, whose ``load_context`` then loads ``artifacts/model.keras`` in Keras safe mode. No ``python_model.pkl``
is written, so loading unpickles nothing. The copy in the model directory is still Python that MLflow's loader
executes: whoever can write the artifact store can change it (README, "What is trusted").
"""
from mlflow.models import set_model

from sweeps.serving import SiameseServingModel

set_model(SiameseServingModel())
