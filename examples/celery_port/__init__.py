"""A worked port: a Celery application (celery_app) and the same on asyncjobs (asyncjobs_app)."""
