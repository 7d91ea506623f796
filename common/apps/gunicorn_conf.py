"""gunicorn settings for the API (``gunicorn -c python:common.apps.gunicorn_conf "api:create_app()"``,
as ``teacher serve``, the Dockerfile and docker-compose.yml run it): the service's JSON log lines
(common/logs.py) for gunicorn's own loggers and the application's alike. Everything else comes
from the command line or GUNICORN_CMD_ARGS."""
from common.logs import dict_config

logconfig_dict = dict_config("api")
