"""The greetings table."""

import peewee


def up(migrator, db):
    class HelloGreeting(peewee.Model):
        message = peewee.CharField(max_length=500)
        author = peewee.CharField(max_length=254)
        created_at = peewee.DateTimeField()
        delivered_at = peewee.DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "hello_greetings"

    db.create_tables([HelloGreeting])


def down(migrator, db):
    db.execute_sql("DROP TABLE hello_greetings")
