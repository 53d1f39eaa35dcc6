"""The Celery side of the worked port: a small Celery application, in the tutorial's style."""
