"""Gunicorn settings for the site; each can be overridden on the command line or with GUNICORN_CMD_ARGS."""

import os

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
timeout = 60
accesslog = "-"
