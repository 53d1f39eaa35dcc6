"""The asyncjobs side of the worked port: celery_app, moved onto asyncjobs.celery_compat."""
