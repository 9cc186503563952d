-- Runs once, on an empty data volume, as POSTGRES_USER (who then owns these databases).
-- POSTGRES_DB=optuna is created by the image itself.
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
