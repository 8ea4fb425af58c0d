"""Open admissions are found by their release time (NULL or after as_of): index it."""

from playhouse.migrate import make_index_name

TABLE, COLUMNS = "monitoring_admissions", ("released_at",)


def up(migrator, db):
    migrator.migrate(migrator.add_index(TABLE, COLUMNS, False))


def down(migrator, db):
    migrator.migrate(migrator.drop_index(TABLE, make_index_name(TABLE, COLUMNS)))
