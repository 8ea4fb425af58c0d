"""Users and API tokens."""

import datetime

import peewee


def up(migrator, db):
    class User(peewee.Model):
        email = peewee.CharField(max_length=254, unique=True)
        name = peewee.CharField(max_length=200)
        role = peewee.CharField(max_length=16, null=True)
        status = peewee.CharField(max_length=16, default="pending")
        password_hash = peewee.CharField(max_length=255)
        created_at = peewee.DateTimeField(default=datetime.datetime.now)
        last_login_at = peewee.DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "core_users"

    class ApiToken(peewee.Model):
        user = peewee.ForeignKeyField(User, on_delete="CASCADE")
        token_hash = peewee.CharField(max_length=64, unique=True)
        kind = peewee.CharField(max_length=16, default="user")
        label = peewee.CharField(max_length=200, default="")
        created_at = peewee.DateTimeField(default=datetime.datetime.now)
        expires_at = peewee.DateTimeField(null=True)
        revoked_at = peewee.DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "core_api_tokens"

    db.create_tables([User, ApiToken])


def down(migrator, db):
    db.execute_sql("DROP TABLE core_api_tokens")
    db.execute_sql("DROP TABLE core_users")
