"""PostgresStore's parts: one mixin per area of the Store protocol, over ``base.PgStoreBase``.

``asyncjobs.store.postgres`` composes them into ``PostgresStore``; import it from there.
"""
