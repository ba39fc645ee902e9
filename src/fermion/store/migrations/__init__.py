"""Alembic migrations of the state store: every change of the schema is a revision here.

``Store(url)`` brings its database to the newest revision when it opens it (in one transaction,
under an advisory lock on PostgreSQL), so a server upgrades its database on start; no alembic.ini
is needed. A database from before Alembic is first converted to revision 0001 and stamped (see
fermion.store._migrate).

To change the schema:

1. Change the models (``fermion/store/_models.py``; a new module of models must be imported by
   ``fermion/store/__init__.py``, as ``_leader`` is, so that its tables are on ``Base.metadata``).
2. Write the revision: ``python -m fermion.store.migrations "job priority"`` applies the
   revisions there are to a scratch SQLite database, compares it with the models, and writes
   ``versions/NNNN_job_priority.py`` with the operations (numbered after the head).
3. Read it and fix what autogenerate cannot know: a new NOT NULL column on a table with rows needs a
   ``server_default`` (or a data step); a rename shows up as a drop and an add. The operations come
   inside ``op.batch_alter_table`` so that SQLite, which cannot alter a column in place, works too.
   Never edit a revision that has shipped: write another.
4. ``tests/test_migrations.py`` checks, on SQLite and PostgreSQL, that a fresh database and an
   upgraded one both match the models.

A revision is a plain Alembic script: ``revision``, ``down_revision`` (the previous one's id),
``upgrade()`` and ``downgrade()`` using ``alembic.op``; ``versions/0002_controller_lease.py`` is a
small example.
"""

from __future__ import annotations
